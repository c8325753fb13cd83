"""Slice search: pure statistics over arrays and Arrow tables (no Ray, no torch, no I/O beyond
reading Parquet). The layer above passes in a task runner to spread counting over Ray."""

from vbugs_ray.slices.settings import SearchSettings

__all__ = ["SearchSettings"]
