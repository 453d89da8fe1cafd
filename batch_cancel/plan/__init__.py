"""Plan: classify every input row (phone hygiene, columns, duplicates) into the journal."""
