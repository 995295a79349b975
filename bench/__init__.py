"""Benchmark of the keys cleanup against a single DELETE and LIMIT batches (issue 5)."""
