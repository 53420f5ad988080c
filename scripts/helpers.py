"""What the benchmark, load-test and simulator scripts share: ports, the service as a process,
plain HTTP, Prometheus text, Retry-After, percentiles and the counted events of a run.

Standard library only: the locustfile imports it too, inside locust's own environment (uvx),
which has none of the project's dependencies.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Sample = tuple[str, tuple[tuple[str, str], ...]]  # (metric name, sorted labels)


# --- ports and processes ----------------------------------------------------------------------


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_ready(
    url: str, process: subprocess.Popen[bytes] | None = None, timeout_s: float = 60.0
) -> None:
    """Poll `url` until it answers 200; fail early when `process` has exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"the service exited with {process.returncode} before it was ready")
        with contextlib.suppress(OSError):
            if http_request(url, timeout_s=1)[0] == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer 200 within {timeout_s:.0f} s")


@contextlib.contextmanager
def running_process(
    command: Sequence[str], env: Mapping[str, str], ready_url: str, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server, wait until `ready_url` answers 200, SIGTERM it (then kill) on the way out.

    Its output goes to `log_path`, never to a pipe nobody reads (a full pipe stalls the server).
    """
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(command), env=dict(env), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_until_ready(ready_url, process)
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def rss_mib(pid: int) -> float:
    """Resident memory of a process, MiB (NaN when it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return math.nan
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else math.nan


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, seconds (NaN when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (name)": state is field 3, so
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # 14 utime, 15 stime


# --- HTTP --------------------------------------------------------------------------------------


def http_request(
    url: str, body: object | None = None, api_key: str | None = None, timeout_s: float = 10.0
) -> tuple[int, bytes]:
    """GET (or POST `body` as JSON) and return (status, body); HTTP errors are answers too."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["X-API-Key"] = api_key
    request = urllib.request.Request(  # noqa: S310 - the scripts build http(s) URLs only
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers=headers,
        method="GET" if body is None else "POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def counted_events(base_url: str, match_ids: Iterable[str], api_key: str | None = None) -> int:
    """The sum of `totalEvents` the service reports over these matches (unknown ones count 0)."""
    total = 0
    for match_id in match_ids:
        status, body = http_request(f"{base_url}/api/matches/{match_id}/metrics", api_key=api_key)
        if status == 200:
            total += int(json.loads(body)["totalEvents"])
        elif status != 404:
            raise SystemExit(f"GET metrics of {match_id} answered {status}: {body[:200]!r}")
    return total


# --- Prometheus text ----------------------------------------------------------------------------


def parse_prometheus(text: str) -> dict[Sample, float]:
    """Samples of a Prometheus text exposition as {(name, sorted labels): value}."""
    samples: dict[Sample, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        with contextlib.suppress(ValueError):
            samples[(name, tuple(sorted(LABEL.findall(rest))))] = float(value)
    return samples


def scrape(base_url: str) -> dict[Sample, float]:
    """The service's /metrics samples; {} when it cannot be read."""
    try:
        status, body = http_request(f"{base_url}/metrics", timeout_s=5)
    except OSError:
        return {}
    return parse_prometheus(body.decode(errors="replace")) if status == 200 else {}


def metric_total(samples: Mapping[Sample, float], name: str) -> float:
    """One metric summed over all its label sets."""
    return sum(value for (sample, _), value in samples.items() if sample == name)


# --- retries and statistics ---------------------------------------------------------------------


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent
    or unreadable."""
    if not value:
        return None
    with contextlib.suppress(ValueError):
        seconds = float(value)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def percentile(values: Iterable[float], rank: float) -> float:
    """Nearest-rank percentile (`rank` 0-100) of the values; NaN when there are none."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(rank / 100 * len(ordered)) - 1)]
