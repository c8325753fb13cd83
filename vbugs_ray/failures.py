"""A batch that raises (a corrupt input, a backend that breaks on one prompt, NaN logits) costs its
bad rows, not the run. ``guarded`` bisects a failing batch until the rows that fail alone are
found, marks each with the reason and gives it zeros in place of an output; the row is kept,
marked invalid (``filter_reason`` "failed", the reason in the ``failed`` column), left out of
every statistic and counted in the report. The driver stops the run with one line only when more
than ``run.max_failed_share`` of its rows have failed (``FailureBudget``): past that, something is
wrong with the setup, not with a few inputs."""

from __future__ import annotations

from typing import Callable

import numpy as np

from vbugs_ray.errors import RunStoreError, cut, one_line

FAILED = "failed"  # the column: why a row failed ("" when it did not)
FAILED_REASON = "failed"  # its filter_reason, beside the filter's own reasons
GIVE_UP_AFTER = 8  # rows that failed alone, with none succeeding, before the rest of a batch is not split further


def reason_of(role: str, exc: BaseException) -> str:
    return f"{role}: {type(exc).__name__}: {cut(one_line(str(exc)), 120)}"


def guarded(fn: Callable[[np.ndarray], np.ndarray], n: int, role: str) -> tuple[np.ndarray | None, dict[int, str]]:
    """``fn(rows)`` (an array with one entry per row index given) over rows 0..n-1; where it
    raises, the batch is split in halves until the failing rows stand alone. Returns the outputs
    (zeros for failed rows; None if no row succeeded) and {row: reason}. A batch with one bad
    row costs about 2 log2(n) extra calls; one where every row fails stops splitting once
    GIVE_UP_AFTER rows failed alone (a broken setup costs a few calls, not one per row)."""
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    failed: dict[int, str] = {}

    def attempt(rows: np.ndarray) -> None:
        if not parts and len(failed) >= GIVE_UP_AFTER:  # every row tried alone failed: the setup, not the inputs
            last = failed[max(failed)]
            failed.update({int(r): f"{last} (not tried alone: every row before it failed)" for r in rows})
            return
        try:
            values = np.asarray(fn(rows))
            if len(values) != len(rows):
                raise ValueError(f"returned {len(values)} outputs for {len(rows)} inputs")
            parts.append((rows, values))
        except Exception as exc:  # noqa: BLE001 - any error of a backend's call marks rows, up to the budget
            if len(rows) == 1:
                failed[int(rows[0])] = reason_of(role, exc)
                return
            attempt(rows[: len(rows) // 2])
            attempt(rows[len(rows) // 2:])

    if n:
        attempt(np.arange(n))
    if not parts:
        return None, failed
    first = parts[0][1]
    out = np.zeros((n, *first.shape[1:]), first.dtype)
    for rows, values in parts:
        out[rows] = values
    return out, failed


def reasons_column(batch: dict[str, np.ndarray], n: int) -> np.ndarray:
    """The batch's ``failed`` column (a fresh copy), or one of empty strings."""
    return np.array(batch[FAILED], dtype=object) if FAILED in batch else np.full(n, "", dtype=object)


class FailureBudget:
    """Failed rows so far in one execution against ``share`` of its ``total`` rows."""

    def __init__(self, share: float, total: int):
        self.share, self.total = share, total
        self.failed, self.example = 0, ""

    def add(self, failed: int, example: str) -> None:
        self.failed += failed
        self.example = self.example or example
        if self.failed > self.share * self.total:
            raise RunStoreError(
                f"{self.failed} rows failed, more than run.max_failed_share ({self.share:g}) of the {self.total} "
                f"being written; e.g. {cut(self.example, 160)}; fix the cause and re-run to resume (whole shards "
                "are kept), or raise run.max_failed_share")
