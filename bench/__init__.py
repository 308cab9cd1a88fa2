"""Benchmarks: each prints its figures; see the README for the last run."""
