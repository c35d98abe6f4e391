"""Benchmarks run with `pytest bench/`; they are kept out of the test suite (no wall-clock asserts there)."""
