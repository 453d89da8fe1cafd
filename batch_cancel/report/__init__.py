"""Report: one schema, the writers, shard merging and the evidence page."""
