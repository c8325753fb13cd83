"""report.json (the output contract other tools read) and the terminal summary."""

from __future__ import annotations

import dataclasses

from vbugs_ray.slices.search import SliceResult
from vbugs_ray.slices.settings import SearchSettings


def build_report(result: SliceResult, settings: SearchSettings, features: list[str], **extra) -> dict:
    """The report.json document (``extra`` keys come first: run name, table path...)."""
    return {
        **extra,
        "n_images": result.n_rows,
        "base_error_rate": result.base_error_rate,
        "evaluated_slices": result.evaluated,
        "lattice_size": result.lattice_size,
        "prune": result.prune,
        "redundant_children_dropped": result.redundant_children,
        "slice_features": features,
        "search": dataclasses.asdict(settings),
        "flagged_slices": result.flagged,
    }


def slice_name(predicates: dict) -> str:
    """'class=star, lighting=night': how a slice is written everywhere (tables, the page, sweeps)."""
    return ", ".join(f"{k}={v}" for k, v in predicates.items())


def format_slices(report: dict, top: int = 10) -> str:
    """A fixed-width table of the top flagged slices."""
    flagged = report["flagged_slices"]
    dropped = report.get("rows_missing_error", 0)
    lines = [f"{report['n_images']} images, base error rate {report['base_error_rate']:.3f}, "
             f"{report['evaluated_slices']} of {report['lattice_size']} lattice slices tested, {len(flagged)} flagged"
             + (f" ({dropped} rows without an error value left out)" if dropped else "")
             + (f" (partial run: {report['rows_missing']} rows missing)" if report.get("partial") else "")]
    if flagged:
        lines.append(f"{'#':>3}  {'slice':<44} {'n':>6} {'err':>6} {'rest':>6} {'effect':>7} {'q':>9}")
    for i, s in enumerate(flagged[:top], 1):
        name = slice_name(s["predicates"])
        lines.append(f"{i:>3}  {name:<44} {s['n']:>6} {s['error_rate']:>6.3f} {s['complement_error_rate']:>6.3f} "
                     f"{s['effect']:>7.2f} {s['q_value']:>9.2e}")
        if s.get("explained_by"):
            lines.append(f"{'':>5}explained by: {', '.join(f'{k}={v}' for k, v in s['explained_by'].items())}")
        if s.get("caption"):
            lines.append(f"{'':>5}caption: {', '.join(s['caption'])}")
    return "\n".join(lines)


def format_bugs(report: dict, top: int = 10) -> str:
    """A fixed-width table of the verified bugs (fresh images vs the class's base images, or for
    a complement such as "square, not grass" vs its reference, "square, grass")."""
    bugs = report.get("verified_bugs", [])
    info = report.get("verification", {})
    lines = [f"{len(bugs)} verified bugs from {len(report.get('hypotheses', []))} hypotheses tested on "
             f"{info.get('images_generated', 0)} fresh images (BH at {info.get('alpha_per_round', 0):g} per round)"]
    if bugs:
        lines.append(f"{'#':>3}  {'bug':<44} {'n':>5} {'err':>6} {'base':>6} {'95% CI':>13} {'q':>9}  sources")
    for i, bug in enumerate(bugs[:top], 1):
        ci = f"{bug['ci_low']:.2f}-{bug['ci_high']:.2f}"
        lines.append(f"{i:>3}  {bug['description']:<44} {bug['n']:>5} {bug['error_rate']:>6.3f} "
                     f"{bug['base_error_rate']:>6.3f} {ci:>13} {bug['q_value']:>9.2e}  {','.join(bug['sources'])}")
        if not bug.get("tested_against", " (base)").endswith(" (base)"):
            lines.append(f"{'':>5}base: fresh images of {bug['tested_against']} (fails without it, not with it)")
        if bug.get("severity_from", bug["description"]) != bug["description"]:
            lines.append(f"{'':>5}ranked by its worst form: {bug['severity_from']}")
        others = [e["description"] for e in bug["evidence"] if e["hypothesis"] != bug["hypothesis"]]
        if others:
            lines.append(f"{'':>5}also: {'; '.join(others[:4])}{' ...' if len(others) > 4 else ''}")
        same_mode = [(j, b) for j, b in enumerate(bugs[:top], 1) if j != i and b.get("mode") == bug.get("mode")]
        if same_mode and same_mode[0][0] > i and bug["top_wrong_predictions"]:
            lines.append(f"{'':>5}same mode (called {bug['top_wrong_predictions'][0][0]}): "
                         + "; ".join(f"#{j} {b['description']}" for j, b in same_mode))
        spread = _widest_open_axis(bug.get("by_open_axis", {}))
        if spread:
            lines.append(f"{'':>5}{spread}")
        flips = _counterfactuals(bug.get("counterfactuals", []))
        if flips:
            lines.append(f"{'':>5}{flips}")
    return "\n".join(lines)


def _counterfactuals(found: list[dict], most: int = 3) -> str:
    """'same image, changed: lighting: night -> day fixes 11/12 · ...': what flips the prediction."""
    if not found:
        return ""
    return "same image, changed: " + " · ".join(f"{c['change']} fixes {c['fixed']}/{c['n']}" for c in found[:most])


def _widest_open_axis(by_axis: dict, min_images: int = 10) -> str:
    """'by background: grass 0/31 · sand 17/36 ...' for the open axis whose error rates (values
    with at least ``min_images`` images) spread the most: the first place to look for the cause."""
    best, best_spread = None, 0.0
    for axis, counts in by_axis.items():
        rates = [e / n for e, n in counts.values() if n >= min_images]
        if len(rates) > 1 and max(rates) - min(rates) > best_spread:
            best, best_spread = axis, max(rates) - min(rates)
    if best is None:
        return ""
    ordered = sorted(by_axis[best].items(), key=lambda kv: kv[1][0] / max(kv[1][1], 1))
    return f"by {best}: " + " · ".join(f"{v} {e}/{n}" for v, (e, n) in ordered)
