"""vbugs_ray: audit image classifiers for failure slices at scale on Ray.

Entry points: the `vbugs` command (vbugs_ray.cli) and vbugs_ray.audit.audit(spec, run_dir).
"""

__version__ = "0.1.0"
