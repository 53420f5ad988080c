"""How CPython's cycle collector runs in a serving process, chosen by where the data lives.

A collection of a generation walks every tracked container in it (and the younger ones), and a
collection starts when the tracked containers allocated minus those freed pass the threshold:
objects freed by reference counting never count. So what sets the pauses is how many objects
*survive*:

- **On MongoDB** little survives a request, and the walks are short whatever the threshold. A
  high young threshold (50,000) makes collections rare: with the default of 700 the collector ran
  thousands of times a second (ingest p99 131 ms -> 27 ms, README "Where ingest time goes").
- **On the embedded engine** every stored event stays alive as nested dicts and lists (its
  document, its time-series copy, their metadata), so the walks grow with the store: with the
  MongoDB thresholds a young collection walked 50,000 survivors (~40 ms) and each twentieth a
  million (~0.8-1 s) while batches of deep events arrived (issue 18). There the young threshold is
  5,000, and each time the store has taken `FREEZE_EVERY_DOCUMENTS` more documents the engine
  calls `documents_stored`, which freezes what is alive (`gc.freeze()`: the permanent generation,
  which no collection walks, in constant time). A collection then walks at most what was
  allocated since the last freeze, a few ms.

What a freeze costs: objects alive at that moment that become cyclic garbage later (a connection
that was open, a request in flight) are not reclaimed. Freezing after *every* collection, as a
first version did, kept ~850 bytes of every connection that was open at some collection (asyncio
transports are in reference cycles); freezing only as the store grows bounds that by the freezes,
i.e. by the data the embedded engine keeps anyway until the process ends, and a process that
stores nothing (reads, refusals) freezes nothing. On MongoDB nothing is frozen after start-up.
"""

from __future__ import annotations

import gc

MONGODB_THRESHOLDS = (50_000, 20, 100)
EMBEDDED_THRESHOLDS = (5_000, 10, 10)
# Stored documents (events and their time-series copies) between freezes: ~1,000-15,000
# containers, so that the walks between freezes stay a few ms even for deep metadata.
FREEZE_EVERY_DOCUMENTS = 1_000


class _StoreFreezer:
    """Counts stored documents and freezes the heap every `FREEZE_EVERY_DOCUMENTS`, once
    enabled."""

    def __init__(self) -> None:
        self.enabled = False
        self._since_freeze = 0

    def stored(self, documents: int) -> None:
        if not self.enabled:
            return
        self._since_freeze += documents
        if self._since_freeze >= FREEZE_EVERY_DOCUMENTS:
            self._since_freeze = 0
            gc.freeze()


_freezer = _StoreFreezer()


def tune_garbage_collector(embedded: bool) -> None:
    """Freeze what start-up allocated, then set the policy for this engine (see the module)."""
    gc.freeze()
    if embedded:
        gc.set_threshold(*EMBEDDED_THRESHOLDS)
        _freezer.enabled = True
    else:
        gc.set_threshold(*MONGODB_THRESHOLDS)
        _freezer.enabled = False


def documents_stored(count: int) -> None:
    """The embedded engine stored `count` more documents (a no-op unless its policy is on: test
    processes, which never call `tune_garbage_collector`, freeze nothing)."""
    _freezer.stored(count)
