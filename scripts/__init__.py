"""Scripts that drive the service from outside: benchmarks, the load test, the match simulator.

Run them from the repository root as modules (`python -m scripts.simulator`); they share
`scripts.helpers`.
"""
