"""Benchmarks (`make bench`): each bench_*.py prints one JSON line per figure."""
