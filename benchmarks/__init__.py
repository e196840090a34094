"""Benchmarks of the engine (`engage bench`)."""
