"""CPU of the load generator, the service and the rest of the machine, sampled from /proc."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_tree_ticks(root: int) -> int:
    """utime + stime (clock ticks) of a process and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        ticks[pid] = int(fields[11]) + int(fields[12])
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += ticks.get(pid, 0)
        stack.extend(child for child, parent in parents.items() if parent == pid)
    return total


def machine_busy_ticks() -> int:
    """Busy clock ticks of the whole machine, all cores (from /proc/stat)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle


@dataclass
class CpuSampler:
    """Per-second CPU% (100 = one core) of process trees, and of the whole machine."""

    roots: dict[str, int]
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    _last: tuple[float, dict[str, int]] | None = None

    def sample(self) -> None:
        now = time.time()
        current = {name: process_tree_ticks(pid) for name, pid in self.roots.items()}
        current["machine"] = machine_busy_ticks()
        if self._last is not None:
            before, ticks = self._last
            elapsed = max(now - before, 1e-6)
            values = {
                name: 100.0 * (current[name] - ticks[name]) / CLOCK_TICKS / elapsed
                for name in current
            }
            values["other"] = max(
                0.0, values["machine"] - sum(v for k, v in values.items() if k in self.roots)
            )
            self.samples.append((now, values))
        self._last = (now, current)
