"""What the simulator shows: the live progress line and the closing report."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, TextIO

from scripts.helpers import percentile

if TYPE_CHECKING:
    from scripts.simulator.run import SimulationResult


def render_progress(
    done: int, total: int, clock: str, score: tuple[int, int], retries: int, reads: int
) -> str:
    """One plain-text progress line, e.g. `[#####.....] 45' 2-1 events 120/240 retries 3`."""
    width = 20
    filled = width if total <= 0 else min(width, round(width * done / total))
    bar = "#" * filled + "." * (width - filled)
    line = f"[{bar}] {clock} {score[0]}-{score[1]} events {done}/{total} retries {retries}"
    return f"{line} reads {reads}" if reads else line


class Progress:
    """Redraws the progress line on a terminal; elsewhere prints it every few seconds."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self._tty = stream is not None and stream.isatty()
        self._every_s = 0.1 if self._tty else 5.0
        self._last = 0.0
        self._width = 0

    def show(self, line: str, *, force: bool = False) -> None:
        if self._stream is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self._every_s:
            return
        self._last = now
        if self._tty:
            self._stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def finish(self, line: str) -> None:
        self.show(line, force=True)
        if self._stream is not None and self._tty:
            self._stream.write("\n")
            self._stream.flush()


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:g} ms"


def format_summary(result: SimulationResult) -> str:
    """The closing report: what was sent, what the service says, and whether they agree."""
    events, reads = result.events, result.reads
    home, away = result.score
    lines = [
        f"match     {result.home_name} {home}-{away} {result.away_name}  "
        f"(full time {result.full_time}, matchId {result.match_id})",
        f"events    sent {events.sent}/{result.planned}  accepted {events.accepted}  "
        f"duplicates {events.duplicates}  retries {events.retries}  "
        f"failures {len(events.failures)}",
    ]
    if reads.sent:
        latency = ""
        if reads.latencies_ms:
            latency = (
                f", p50 {percentile(reads.latencies_ms, 50):.1f} ms"
                f" p99 {percentile(reads.latencies_ms, 99):.1f} ms"
            )
        lines.append(
            f"reads     {reads.sent} GET /metrics ({reads.spike} in goal spikes at "
            f"x{result.spike_factor:g}): 200 {reads.ok}, 404 {reads.not_found}, "
            f"errors {reads.errors}{latency}"
        )
    pace = "as fast as possible" if result.speed <= 0 else f"speed {result.speed:g}"
    lines.append(f"elapsed   {result.elapsed_s:.1f} s ({pace})")
    metrics = result.metrics
    if metrics is None:
        lines.append("metrics   none: the service has counted no event of this match")
    else:
        by_type = ", ".join(f"{k} {v}" for k, v in sorted(metrics["eventsByType"].items()))
        by_team = ", ".join(f"{k} {v}" for k, v in sorted(metrics["eventsByTeam"].items()))
        response, lag = metrics["responseTimeMs"], metrics["processingLagMs"]
        peak = metrics["peakEngagementPeriods"][:1]
        lines += [
            f"metrics   status {metrics['status']}  totalEvents {metrics['totalEvents']}",
            f"          by type: {by_type}",
            f"          by team: {by_team}",
            f"          ingest response p50 {_ms(response['p50'])}  p95 {_ms(response['p95'])}"
            f"  p99 {_ms(response['p99'])} ({response['samples']} samples)",
            f"          processing lag p50 {_ms(lag['p50'])}  p95 {_ms(lag['p95'])}"
            f"  p99 {_ms(lag['p99'])}",
        ]
        if peak:
            lines.append(
                f"          busiest minute {peak[0]['minute']} ({peak[0]['events']} events)"
            )
    before = (
        f" + {result.already_counted} counted before this run" if result.already_counted else ""
    )
    verdict = "OK" if result.counted == result.expected_total else "MISMATCH"
    lines.append(
        f"check     totalEvents {result.counted} vs accepted {events.accepted}{before}: {verdict}"
    )
    lines += [f"FAILURE   {failure}" for failure in events.failures[:20]]
    if len(events.failures) > 20:
        lines.append(f"FAILURE   ... and {len(events.failures) - 20} more")
    return "\n".join(lines)
