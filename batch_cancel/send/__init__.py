"""Send and match: the send phase, its workers, the pacer, records in flight and the matcher."""
