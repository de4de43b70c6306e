"""Benchmarks: runnable scripts, not tests (results go to docs/benchmarks/)."""
