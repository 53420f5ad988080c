"""Fanfinity: real-time fan engagement analytics for match days."""

__version__ = "0.1.0"
