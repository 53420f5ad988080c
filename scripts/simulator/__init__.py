"""The match simulator: `python -m scripts.simulator` replays a match against a running service.

plan (the pure match script and read schedule), producer (retrying POSTs), readers (dashboards),
run (the two together), report (progress and summary), __main__ (the command line).
"""
