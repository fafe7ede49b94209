"""Datasets: readers for common formats, the project's on-disk format, protocol splits."""
