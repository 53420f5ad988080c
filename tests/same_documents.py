"""Document equality as the embedded engine's fidelity tests need it: stricter than `==`."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def same(left: Any, right: Any) -> bool:
    """Equal, of the same types all the way down, keys in the same order, datetimes with the same
    tzinfo and floats to the sign (`-0.0 == 0.0`, yet they are different values to store)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return list(left) == list(right) and all(same(left[k], right[k]) for k in left)
    if isinstance(left, list | tuple):
        return len(left) == len(right) and all(map(same, left, right))
    if isinstance(left, datetime):
        return left == right and left.tzinfo == right.tzinfo
    if isinstance(left, float):
        return repr(left) == repr(right)
    return bool(left == right)
