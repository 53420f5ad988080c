"""The metrics directory several workers share: made for the run, gone after it, however it ends."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from fanfinity.launcher import MULTIPROCESS_DIR_VARIABLE, multiprocess_metrics_dir


@pytest.fixture(autouse=True)
def scratch_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv(MULTIPROCESS_DIR_VARIABLE, raising=False)
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    return tmp_path


def test_several_workers_get_a_fresh_directory_that_is_removed_after(scratch_tmp: Path) -> None:
    with multiprocess_metrics_dir(2) as directory:
        assert directory is not None
        assert Path(directory).is_dir()
        assert Path(directory).parent == scratch_tmp
        assert os.environ[MULTIPROCESS_DIR_VARIABLE] == directory
    assert not Path(directory).exists()
    assert MULTIPROCESS_DIR_VARIABLE not in os.environ


def test_the_directory_is_removed_when_the_start_fails(scratch_tmp: Path) -> None:
    with pytest.raises(SystemExit), multiprocess_metrics_dir(2):
        raise SystemExit(3)  # what uvicorn raises when the app cannot start
    assert list(scratch_tmp.iterdir()) == []


def test_one_worker_needs_no_directory(scratch_tmp: Path) -> None:
    with multiprocess_metrics_dir(1) as directory:
        assert directory is None
    assert list(scratch_tmp.iterdir()) == []


def test_a_directory_the_operator_chose_is_used_and_kept(
    scratch_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = scratch_tmp / "prometheus"
    chosen.mkdir()
    monkeypatch.setenv(MULTIPROCESS_DIR_VARIABLE, str(chosen))
    with multiprocess_metrics_dir(4) as directory:
        assert directory == str(chosen)
    assert chosen.is_dir()
