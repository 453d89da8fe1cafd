"""Journal: the run's durable memory (store), its single writer, and the plan snapshot."""
