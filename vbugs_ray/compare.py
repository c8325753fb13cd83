"""A sweep's comparison: every slice any classifier's search flagged, with each classifier's error
rate on it (the same images, so the same rows, for all), and whether it is flagged by all
(shared), by one (specific to that model) or by some; the same for verified bugs, by description.
Reading each model's rows once is enough: a slice's error rate is a mask over them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vbugs_ray.report import slice_name
from vbugs_ray.spec import AuditSpec
from vbugs_ray.store import RunStore


def _verdict(holders: list[str], names: list[str]) -> str:
    if len(holders) == len(names):
        return "shared"
    if len(holders) == 1:
        return f"specific to {holders[0]}"
    return "some: " + ", ".join(holders)


def _rates(run_dir: Path, features: list[str], slices: list[dict]) -> list[dict]:
    """Errors / valid rows of each slice in one run."""
    table = RunStore(run_dir).read_valid(["error", *features])
    values = {name: table.column(name).to_numpy(zero_copy_only=False).astype(str) for name in features}
    errors = table.column("error").to_numpy(zero_copy_only=False).astype(bool)
    out = []
    for predicates in slices:
        mask = np.ones(len(errors), bool)
        for name, value in predicates.items():
            mask &= values[name] == str(value)
        n = int(mask.sum())
        out.append({"n": n, "errors": int(errors[mask].sum()), "error_rate": float(errors[mask].mean()) if n else None})
    return out


def compare(run_dirs: dict[str, Path], reports: dict[str, dict], spec: AuditSpec) -> dict:
    names = list(run_dirs)
    features = ["class", *spec.axis_names]
    flagged: dict[str, dict] = {}
    for name in names:
        for s in reports[name]["flagged_slices"]:
            entry = flagged.setdefault(slice_name(s["predicates"]), {"predicates": s["predicates"], "flagged_by": {}})
            entry["flagged_by"][name] = {"q_value": s["q_value"], "explained_by": s.get("explained_by")}
    slices = list(flagged.values())
    by_model = {name: _rates(run_dirs[name], features, [s["predicates"] for s in slices]) for name in names}
    rows = []
    for i, entry in enumerate(slices):
        holders = [n for n in names if n in entry["flagged_by"]]
        rows.append({"slice": slice_name(entry["predicates"]), "predicates": entry["predicates"],
                     "verdict": _verdict(holders, names), "flagged_by": holders,
                     "models": {n: {**by_model[n][i], "flagged": n in entry["flagged_by"],
                                    **({"q_value": entry["flagged_by"][n]["q_value"]} if n in entry["flagged_by"] else {})}
                                for n in names}})
    rows.sort(key=lambda r: (-len(r["flagged_by"]), min(r["models"][n].get("q_value", 1.0) for n in names)))
    bugs: dict[str, list[str]] = {}
    for name in names:
        for bug in reports[name].get("verified_bugs", []):
            bugs.setdefault(bug["description"], []).append(name)
    return {
        "classifiers": names,
        "base_error_rate": {n: reports[n]["base_error_rate"] for n in names},
        "slices": rows,
        "verified_bugs": [{"description": d, "verified_for": held, "verdict": _verdict(held, names)}
                          for d, held in sorted(bugs.items(), key=lambda kv: -len(kv[1]))],
    }


def format_comparison(result: dict, top: int = 15) -> str:
    """The comparison as a fixed-width table: each slice's error rate per classifier, * where flagged."""
    names = result["classifiers"]
    width = max(10, *(len(n) for n in names))
    lines = [f"{'slice':<44} " + " ".join(f"{n[:width]:>{width}}" for n in names) + "  verdict",
             f"{'(base error rate)':<44} " + " ".join(f"{result['base_error_rate'][n]:>{width}.3f}" for n in names)]
    for row in result["slices"][:top]:
        cells = []
        for n in names:
            m = row["models"][n]
            rate = "-" if m["error_rate"] is None else f"{m['error_rate']:.3f}"
            cells.append(f"{rate + ('*' if m['flagged'] else ' '):>{width}}")
        lines.append(f"{row['slice'][:44]:<44} " + " ".join(cells) + f"  {row['verdict']}")
    if result["verified_bugs"]:
        lines.append("verified bugs:")
        lines += [f"  {b['description']}: {b['verdict']}" for b in result["verified_bugs"][:top]]
    return "\n".join(lines)
