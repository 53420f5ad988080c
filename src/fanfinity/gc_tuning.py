"""How CPython's cycle collector runs in a serving process, chosen by where the data lives.

A collection of a generation walks every tracked container in it (and the younger ones), and a
collection starts when the tracked containers allocated minus those freed pass the threshold:
objects freed by reference counting never count. So what sets the pauses is how many objects
*survive*:

- **On MongoDB** little survives a request, and the walks are short whatever the threshold. A
  high young threshold (50,000) makes collections rare: with the default of 700 the collector ran
  thousands of times a second (ingest p99 131 ms -> 27 ms, README "Where ingest time goes").
- **On the embedded engine** every stored event stays alive as nested dicts and lists (its
  document, its time-series copy, their metadata), so nearly everything allocated survives and
  the walks grow with the store: with the MongoDB thresholds a young collection walked 50,000
  survivors (~40 ms) and each twentieth walked a million (~0.8-1 s) while batches of deep events
  arrived (issue 18). There, the survivors of each collection are frozen (`gc.freeze()` moves
  them to the permanent generation, which no collection walks, in constant time), and the young
  threshold is 5,000: every collection walks at most what was allocated since the last one,
  a few ms. Cyclic garbage is still found as long as it becomes garbage before the collection
  after its allocation; what was alive at a collection and later becomes cyclic garbage is no
  longer reclaimed. That is a bounded share of what the embedded engine, which keeps every event
  until the process ends, already keeps; on MongoDB nothing is frozen after start-up.
"""

from __future__ import annotations

import gc
from typing import Any

MONGODB_THRESHOLDS = (50_000, 20, 100)
EMBEDDED_THRESHOLDS = (5_000, 10, 10)


def tune_garbage_collector(embedded: bool) -> None:
    """Freeze what start-up allocated, then set the policy for this engine (see the module)."""
    gc.freeze()
    if not embedded:
        gc.set_threshold(*MONGODB_THRESHOLDS)
        return
    gc.set_threshold(*EMBEDDED_THRESHOLDS)
    if freeze_survivors not in gc.callbacks:
        gc.callbacks.append(freeze_survivors)


def freeze_survivors(phase: str, info: dict[str, Any]) -> None:
    """After every collection: what survived it leaves the walks of later ones."""
    if phase == "stop":
        gc.freeze()
