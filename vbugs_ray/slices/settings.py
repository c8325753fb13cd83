"""The slice search's settings: the spec's ``search`` section, the CLI's overrides and the
library's defaults are this one declaration."""

from __future__ import annotations

from dataclasses import dataclass

from vbugs_ray.fields import option, parse_options

FDR_PROCEDURES = ("bh", "alpha_investing")
PRUNE_MODES = ("auto", "elevated", "exact", "none")


@dataclass(frozen=True)
class SearchSettings:
    alpha: float = option(0.05, kind=float, low=0, high=1, low_open=True)
    min_support: int = option(20, kind=int, low=1)
    max_order: int = option(3, kind=int, low=1, high=5)
    min_effect: float = option(0.2, kind=float, low=0)
    top_k: int = option(10, kind=int, low=1)  # flagged slices captioned and printed
    fdr: str = option("bh", choices=FDR_PROCEDURES)
    prune: str = option("auto", choices=PRUNE_MODES)  # see slices.lattice
    expand_alpha: float = option(0.1, kind=float, low=0, high=1, low_open=True)
    max_values: int = option(20, kind=int, low=2)  # distinct values a feature keeps (then 'other' / bins)
    n_bins: int = option(10, kind=int, low=2)  # quantile bins of a numeric feature

    @classmethod
    def parse(cls, raw, where: str = "search") -> "SearchSettings":
        return parse_options(cls, raw, where)
