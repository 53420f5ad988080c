"""Runs uvicorn for ``fanfinity serve`` and ``fanfinity aggregate``, with one exit status contract.

``uvicorn.run`` exits 3 when a single server fails to start, but with several workers its
supervisor just stops and ``run`` returns, so a service whose workers all failed (MongoDB
unreachable) exited 0 and orchestrators took it for a clean stop. Here every worker count ends
the same way: 0 after a clean stop, 3 (uvicorn's ``STARTUP_FAILURE``) when the app or the socket
could not start. "ready" is logged by each serving process only once its socket is bound: uvicorn
runs the lifespan start-up before it binds, so a log line from the lifespan would claim readiness
that a taken port then denies.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from loguru import logger

STARTUP_FAILURE = 3  # uvicorn.config.STARTUP_FAILURE
MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
MULTIPROCESS_DIR_PREFIX = "fanfinity-metrics-"


def run_uvicorn(app: str, options: dict[str, Any], *, role: str) -> int:
    """Serve ``app`` (an import string) with uvicorn ``options``; returns the exit status.

    A bind or app start-up failure of a single server raises ``SystemExit(3)`` from inside
    uvicorn, as before; callers let it propagate.
    """
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from fanfinity import __version__

    ready = f"fanfinity {__version__} ({role}) ready on http://{options['host']}:{options['port']}"
    announce = functools.partial(_announce_ready, ready)
    config = uvicorn.Config(app, **options, callback_notify=announce)
    if config.workers == 1:
        server = uvicorn.Server(config)
        server.run()
        return 0 if server.started else STARTUP_FAILURE
    socket = config.bind_socket()  # the workers share it; exits 3 when the port is taken
    supervisor = Multiprocess(config, sockets=[socket])
    supervisor.run()
    failed = [p.pid for p in supervisor.processes if p.exitcode == STARTUP_FAILURE]
    if failed:
        logger.error(
            "start-up failed: worker(s) {} could not start; exiting with status {}",
            ", ".join(str(pid) for pid in failed),
            STARTUP_FAILURE,
        )
        return STARTUP_FAILURE
    return 0


_announced: list[bool] = []


async def _announce_ready(message: str) -> None:
    """uvicorn's notify callback: its first call comes from the serving loop, after the bind.

    uvicorn calls it again every ``timeout_notify`` seconds (a heartbeat meant for gunicorn);
    only the first call of each process logs.
    """
    if not _announced:
        _announced.append(True)
        logger.info("{} (pid {})", message, os.getpid())


@contextmanager
def multiprocess_metrics_dir(workers: int) -> Iterator[str | None]:
    """With several workers, give prometheus-client a fresh shared directory and remove it after.

    A directory the operator set in ``PROMETHEUS_MULTIPROC_DIR`` is theirs: used, never removed.
    """
    if workers <= 1 or MULTIPROCESS_DIR_VARIABLE in os.environ:
        yield os.environ.get(MULTIPROCESS_DIR_VARIABLE)
        return
    directory = tempfile.mkdtemp(prefix=MULTIPROCESS_DIR_PREFIX)
    os.environ[MULTIPROCESS_DIR_VARIABLE] = directory
    try:
        yield directory
    finally:
        os.environ.pop(MULTIPROCESS_DIR_VARIABLE, None)
        shutil.rmtree(directory, ignore_errors=True)
