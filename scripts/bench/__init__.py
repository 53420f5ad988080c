"""The benchmarks: `python -m scripts.bench` (wrk) and `python -m scripts.bench.streams` (SSE)."""
