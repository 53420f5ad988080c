"""The load test's chart: requests/s and p50/p99 per second for ingest and reads, the spike shaded.

matplotlib is optional (`uv run --with matplotlib==3.11.2`); without it the chart is skipped.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from scripts.loadtest.stats import KINDS, Series, Windows

LOCUST_VERSION = "2.47.0"


def chart(
    series: dict[str, Series],
    args: argparse.Namespace,
    windows: Windows,
    summary: dict[str, Any],
    path: Path,
) -> str | None:
    try:
        import matplotlib  # optional: `uv run --with matplotlib`

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is missing: run with `uv run --with matplotlib==3.11.2 ...`"
    titles = {
        "ingest": "Ingest: POST /api/events (202 only once durable)",
        "reads": "Dashboard reads: GET /api/matches/{matchId}/metrics",
    }
    figure, axes = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True)
    spike_start, spike_end = windows["spike"]
    for ax, kind in zip(axes, KINDS, strict=True):
        data = series[kind]
        span = ax.axvspan(
            spike_start,
            spike_end,
            color="tab:red",
            alpha=0.12,
            label=f"goal spike (x{args.spike_factor})",
        )
        (rate,) = ax.plot(
            data.seconds,
            data.rate,
            color="tab:blue",
            lw=1.6,
            drawstyle="steps-pre",  # each value is the second that ends there
            label="requests/s",
        )
        handles = [rate]
        if any(data.failures):
            (fail,) = ax.plot(
                data.seconds,
                data.failures,
                color="tab:red",
                lw=1.2,
                drawstyle="steps-pre",
                label="failed requests/s",
            )
            handles.append(fail)
        ax.set_ylabel("requests/s", color="tab:blue")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        twin = ax.twinx()
        (p99,) = twin.plot(
            data.seconds,
            [math.nan if v is None else v for v in data.p99],
            color="tab:orange",
            lw=1.4,
            drawstyle="steps-pre",
            label="p99 latency (per second)",
        )
        (p50,) = twin.plot(
            data.seconds,
            [math.nan if v is None else v for v in data.p50],
            color="tab:orange",
            lw=1.0,
            ls="--",
            drawstyle="steps-pre",
            label="p50 latency (per second)",
        )
        twin.set_ylabel("latency (ms)", color="tab:orange")
        twin.set_ylim(bottom=0)
        ax.set_title(titles[kind], loc="left", fontsize=11)
        ax.legend(handles=[*handles, p99, p50, span], loc="upper right", fontsize=8.5)
    axes[-1].set_xlabel("seconds since the start of the load")
    axes[-1].set_xlim(0, max(args.duration, windows["after"][1]))
    target = "one uvicorn worker, embedded engine" if args.start_service else args.host
    figure.suptitle(
        f"Match-day load test: a goal lands at {args.spike_at:g} s and load x{args.spike_factor} "
        f"for {args.spike_duration:g} s ({target}; locust {LOCUST_VERSION})",
        fontsize=12,
    )
    loss = summary["zero_loss"]
    figure.text(
        0.01,
        0.005,
        f"zero loss: {loss['acknowledged']} events acknowledged, {loss['counted']} counted. "
        "Latency as locust measured it (client side); requests/s include retries.",
        fontsize=8.5,
        color="dimgray",
    )
    figure.tight_layout(rect=(0, 0.02, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return None
