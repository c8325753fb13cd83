"""The spec's ``verify`` section: how many fresh images a hypothesis gets, how many hypotheses
and rounds the budget allows, and the false-discovery level. ``verify: false`` skips the stage."""

from __future__ import annotations

from dataclasses import dataclass

from vbugs_ray.errors import SpecError
from vbugs_ray.fields import check_value, option, parse_options


def _phrases(value, where: str) -> list[str]:
    if not isinstance(value, list):
        raise SpecError(where, "expected a list of phrases, e.g. [in heavy clutter, at night]")
    return [check_value(v, f"{where}[{i}]", kind=str) for i, v in enumerate(value)]


@dataclass(frozen=True)
class VerifySettings:
    images_per_hypothesis: int = option(200, kind=int, low=10)
    max_hypotheses: int = option(16, kind=int, low=1)  # hypotheses tested per round (five sources share them)
    rounds: int = option(2, kind=int, low=1, high=5)  # round 2 on tests the parts of verified descriptions
    alpha: float = option(0.05, kind=float, low=0, high=1, low_open=True)  # split evenly over the rounds
    vocabulary: list = option([], parse=_phrases)  # phrases the diagnosis ensemble ranks, besides the generator's
    max_groups: int = option(8, kind=int, low=1, high=32)  # failure groups (k) considered per class
    min_errors: int = option(10, kind=int, low=2)  # failures a class (or group) needs before it is clustered
    replicate: bool = option(False, kind=bool)  # test each verified bug again on a second fresh sample

    @classmethod
    def parse(cls, raw, where: str = "verify") -> "VerifySettings | None":
        """``false`` (or ``enabled: false``) turns verification off; a mapping sets options."""
        if raw is False:
            return None
        if raw is True or raw is None:
            raw = {}
        return parse_options(cls, raw, where)

    @property
    def alpha_per_round(self) -> float:
        """Bonferroni over rounds: BH at this level within each round keeps the chance of any
        false verified bug, when no hypothesis is true, at most ``alpha`` over the whole run."""
        return self.alpha / self.rounds
