"""The match-day load test: `python -m scripts.loadtest` runs locustfile.py headless.

See README.md here for the scenario, the options and the figures.
"""
