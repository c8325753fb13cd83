"""vbugs_ray: audit image classifiers for failure slices at scale on Ray.

Entry points: the `vbugs` command (vbugs_ray.cli) and the Python API (vbugs_ray.api):
``vbugs_ray.audit(spec, out=None)``, ``vbugs_ray.search_table(table, error=...)``,
``vbugs_ray.register_backend(role, name, cls)``, each returning or using a ``Report``. They load
on first use, so ``import vbugs_ray`` stays light (no torch, no Ray).
"""

__version__ = "0.1.0"
__all__ = ["audit", "search_table", "register_backend", "Report"]


def __getattr__(name: str):
    if name in __all__:
        from vbugs_ray import api

        return getattr(api, name)
    raise AttributeError(f"module 'vbugs_ray' has no attribute {name!r}")
