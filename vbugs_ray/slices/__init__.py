"""Slice search: pure statistics (stats), the lattice over metadata (search); no Ray, no torch."""

from vbugs_ray.slices.search import SearchSettings, SliceResult, search_slices

__all__ = ["SearchSettings", "SliceResult", "search_slices"]
