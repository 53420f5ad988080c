"""What happens to an event: the ingest batcher (group commit), the aggregator loop, the pure fold
and its maths, metric reads and live streams."""
