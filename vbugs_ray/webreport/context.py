"""What report.html shows, gathered from a run directory: report.json, spec.json, timing.json,
the run's rows (heatmaps, galleries of flagged slices) and the verification rounds' rows
(galleries of verified bugs). Plain data for the template; nothing here writes HTML."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vbugs_ray import timing
from vbugs_ray.errors import RunStoreError
from vbugs_ray.report import slice_name
from vbugs_ray.store import PART_NAME, RunStore
from vbugs_ray.webreport import plots
from vbugs_ray.webreport.galleries import Rows

MAX_CARDS = 20  # bugs (or flagged slices) with a card of their own; the table lists them all
PAIRS_SHOWN = 6  # counterfactual pairs shown per bug (its most fixing change's)
MODEL_KEYS = ("model", "model_id", "model_name", "pretrained", "checkpoint", "path")


def _backend(role: dict | None) -> str:
    """'timm (model: vit_base_patch16_224)': the backend and the option that names its weights."""
    if not role:
        return "none"
    named = [f"{k}: {role['options'][k]}" for k in MODEL_KEYS if k in role.get("options", {})]
    return role["backend"] + (f" ({', '.join(named)})" if named else "")


def _summary(report: dict, spec: dict, run_dir: Path) -> dict:
    filtered = report.get("filter") or {}
    generated = filtered.get("n_generated", report["n_images"])
    invalid = filtered.get("n_invalid", 0)
    seconds = timing.read(run_dir)
    verification = report.get("verification", {})
    hypotheses = report.get("hypotheses", [])
    return {
        "name": report.get("name", spec.get("name", "")),
        "classifier": _backend(spec.get("classifier")),
        "generator": _backend(spec.get("generator")),
        "embedder": _backend(spec.get("embedder")),
        "captioner": _backend(spec.get("captioner")),
        "classes": len(spec.get("classes", [])),
        "axes": ", ".join(f"{axis} ({len(values)})" for axis, values in spec.get("axes", {}).items())
        or "no axis (class-only)",
        "generated": generated,
        "valid": generated - invalid,
        "invalid": invalid,
        "read": bool(report.get("read_from_dataset")),  # a dataset's images: read, not generated
        # what verification saw: images made for it, or a dataset's held-out images
        "fresh": "held-out images" if report.get("read_from_dataset") else "fresh images",
        "invalid_reasons": ", ".join(f"{k}: {v}" for k, v in filtered.get("invalid_reasons", {}).items()),
        "fresh_images": verification.get("images_generated"),
        "base_error_rate": report["base_error_rate"],
        "evaluated": report["evaluated_slices"],
        "lattice": report["lattice_size"],
        "flagged": len(report["flagged_slices"]),
        "tested": len(hypotheses),
        "verified": sum(h.get("verdict") == "verified" for h in hypotheses),
        "untested": report.get("untested_hypotheses"),
        "partial": report.get("rows_missing") if report.get("partial") else None,
        "run_seconds": sum(seconds.values()) if seconds else None,
        "step_seconds": seconds,
    }


def _heatmaps(rows: Rows, spec: dict) -> list[dict]:
    """One class x value heatmap of the run's error rate per axis (valid rows only)."""
    by_class = {c: counts for (c,), counts in rows.error_counts(["class"]).items()}
    if not by_class:
        return []
    order = [c for c in spec.get("classes", []) if c in by_class] or sorted(by_class)
    if len(order) > plots.MAX_CLASSES:
        order = sorted(order, key=lambda c: -by_class[c][0] / max(by_class[c][1], 1))[: plots.MAX_CLASSES]
    out = []
    for axis in spec.get("axes", {}):
        cells = rows.error_counts(["class", axis])
        seen: dict[str, int] = {}
        for (_, value), (_, n) in cells.items():
            seen[value] = seen.get(value, 0) + n
        values = [v for v in spec["axes"][axis] if v in seen]
        if len(values) > plots.MAX_VALUES:
            values = sorted(values, key=lambda v: -seen[v])[: plots.MAX_VALUES]
        e = np.array([[cells.get((c, v), (0, 0))[0] for v in values] for c in order], float)
        n = np.array([[cells.get((c, v), (0, 0))[1] for v in values] for c in order], float)
        out.append({"axis": axis, "src": plots.error_heatmap(axis, order, values, e, n)})
    return out


def _plots(report: dict, rows: Rows, spec: dict) -> dict:
    flagged = report["flagged_slices"]
    finite = [(i, s) for i, s in enumerate(flagged, 1) if s.get("effect") is not None]  # null: an infinite effect
    scatter = plots.effect_vs_support([s["n"] for _, s in finite], [s["effect"] for _, s in finite],
                                      [f"#{i}" for i, _ in finite if i <= 10]) if finite else None
    diagnosis = report.get("discovery", {}).get("diagnosis", {})
    held = diagnosis.get("held_out") or {}
    pairs = [(t, p) for t, p in zip(held.get("true_loss", []), held.get("predicted_loss", []))
             if t is not None and p is not None]
    ensemble = plots.predicted_vs_true([t for t, _ in pairs], [p for _, p in pairs], diagnosis.get("r2"),
                                       diagnosis.get("spearman")) if len(pairs) >= 3 else None
    return {"heatmaps": _heatmaps(rows, spec), "effect_vs_support": scatter, "diagnosis": ensemble}


def _phrases(hypotheses: dict, keys: list[str]) -> tuple[list[str], list[str]]:
    """The captions and contrast phrases that proposed a bug's hypotheses (deduplicated, in order)."""
    captions, phrases = {}, {}
    for key in keys:
        h = hypotheses.get(key, {})
        for phrase in h.get("phrases", []):
            phrases[phrase] = None
        for source in h.get("sources", []):
            if source.get("caption"):
                captions[", ".join(source["caption"])] = None
            if source.get("phrase"):
                phrases[source["phrase"]] = None
    return list(captions), list(phrases)


def _bug_cards(report: dict, run_dir: Path, spec: dict) -> list[dict]:
    """Per verified bug: its numbers, evidence, captions, and two galleries from the fresh rows
    it was verified on: failing images of the bug, and images of its class without the bug
    (the reference arm of a complement, else the class's base arm outside the bug's values)."""
    folder = run_dir / "verify" / Path(report["verification"]["folder"]).name
    # the published shards of each round (the report was judged on them; staging folders are hidden)
    folders = [*sorted(folder.glob("round-*")), folder / "replication", folder / "counterfactual"]
    files = sorted(str(p) for sub in folders for p in (sub / "rows").glob("shard-*/*") if PART_NAME.fullmatch(p.name))
    rows = Rows(files, list(spec.get("axes", {})))
    hypotheses = {h["key"]: h for h in report.get("hypotheses", [])}
    ids, cards = {}, []
    fresh = "held-out images" if report.get("read_from_dataset") else "fresh images"
    errors, arms, classes = rows.errors(), rows.column("arm"), rows.column("class")
    row_ids = rows.columns.get("row_id", np.zeros(0, int))
    for index, bug in enumerate(report["verified_bugs"][:MAX_CARDS], 1):
        h = hypotheses.get(bug["hypothesis"], {})
        own = np.isin(row_ids, np.asarray(bug.get("row_ids", []), np.int64))
        complement = bool(h.get("excluded"))
        # a description made of phrases only ("star, at night") names no column: the class's
        # base arm, which it was tested against, is the "without" side
        inside = rows.matching(h.get("predicates", {}), h.get("excluded")) if h.get("predicates") or \
            h.get("excluded") else np.zeros(len(row_ids), bool)
        if complement:  # its own reference arm: the class with the value it spares ("square, grass")
            without = (arms == "reference") & (classes == bug["class"]) & rows.matching(
                {**h.get("predicates", {}), **h["excluded"]})
        else:
            without = rows.valid & (arms == "base") & (classes == bug["class"]) & ~inside
        ids[f"fail{index}"] = rows.pick(own & errors & rows.valid)
        ids[f"without{index}"] = rows.pick(without)
        best = (bug.get("counterfactuals") or [None])[0]  # the change that fixes the most pairs
        for j, (failing, changed) in enumerate(best["pairs"][:PAIRS_SHOWN] if best else []):
            ids[f"cf{index}.{j}.a"], ids[f"cf{index}.{j}.b"] = [failing], [changed]
        captions, phrases = _phrases(hypotheses, [e["hypothesis"] for e in bug.get("evidence", [])] or [bug["hypothesis"]])
        cards.append({"index": index, "bug": bug, "captions": captions, "phrases": phrases,
                      "without_label": f"{fresh} of {bug.get('tested_against', bug['class'])}"
                      if complement else f"{fresh} of {bug['class']} without “{bug['description']}”",
                      "by_open_axis": _open_axes(bug.get("by_open_axis", {}))})
    tiles = rows.tiles(ids)
    for card in cards:
        i = card["index"]
        card["failing"], card["without"] = tiles[f"fail{i}"], tiles[f"without{i}"]
        card["pairs"] = [(tiles[f"cf{i}.{j}.a"][0], tiles[f"cf{i}.{j}.b"][0]) for j in range(PAIRS_SHOWN)
                         if tiles.get(f"cf{i}.{j}.a") and tiles.get(f"cf{i}.{j}.b")]
        card["change"] = (card["bug"].get("counterfactuals") or [{}])[0]
    return cards


def _open_axes(by_axis: dict) -> list[dict]:
    """Per open axis, each value's errors/images, worst first: where to look for the cause."""
    out = []
    for axis, counts in by_axis.items():
        values = sorted(counts.items(), key=lambda kv: -kv[1][0] / max(kv[1][1], 1))
        out.append({"axis": axis, "values": [{"value": v, "errors": e, "n": n, "rate": e / n if n else 0.0}
                                             for v, (e, n) in values]})
    return out


def _slice_cards(report: dict, rows: Rows) -> list[dict]:
    """Per flagged slice (a run without verification): failing images in the slice, and images
    of the same class outside it (for a slice across classes, or a whole class, of the run)."""
    ids, cards = {}, []
    errors, classes = rows.errors(), rows.column("class")
    for index, s in enumerate(report["flagged_slices"][:MAX_CARDS], 1):
        predicates = dict(s["predicates"])
        inside = rows.matching(predicates)
        rest = rows.valid & ~inside
        same_class = "class" in predicates and len(predicates) > 1  # a whole class's slice: other classes
        if same_class:
            rest &= classes == str(predicates["class"])
        ids[f"fail{index}"] = rows.pick(inside & errors)
        ids[f"without{index}"] = rows.pick(rest)
        cards.append({"index": index, "slice": s, "name": slice_name(predicates), "same_class": same_class,
                      "captions": [", ".join(s["caption"])] if s.get("caption") else []})
    tiles = rows.tiles(ids)
    for card in cards:
        card["failing"], card["without"] = tiles[f"fail{card['index']}"], tiles[f"without{card['index']}"]
    return cards


def _tested(hypotheses: list[dict]) -> list[dict]:
    """Every hypothesis tested, verified first (most significant first), each with where it came
    from: its sources' kinds, or the verified description it was cut from (a pruning test)."""
    described = {h["key"]: h["description"] for h in hypotheses}
    out = []
    for h in sorted(hypotheses, key=lambda h: (h.get("verdict") != "verified", h.get("q_value") or 1.0)):
        origin = list(dict.fromkeys(source["kind"] for source in h.get("sources", [])))
        if h.get("parent") in described:
            origin.append(f"part of: {described[h['parent']]}")
        out.append({**h, "origin": origin})
    return out


def _load_report(store: RunStore) -> dict:
    if not store.report_path.exists():
        raise RunStoreError(f"{store.report_path} does not exist yet: run `vbugs slices {store.root}` (or let "
                            "`vbugs audit` finish) first")
    try:
        report = json.loads(store.report_path.read_text())
    except (OSError, ValueError) as exc:
        raise RunStoreError(f"{store.report_path} cannot be read ({exc}); run `vbugs slices {store.root}` to "
                            "write it again") from None
    if not isinstance(report, dict) or "flagged_slices" not in report:
        raise RunStoreError(f"{store.report_path} is not a vbugs report; run `vbugs slices {store.root}` to write "
                            "it again")
    return report


def page_context(run_dir: str | Path) -> dict:
    """Everything the template needs, from a run directory with a report.json."""
    run_dir = Path(run_dir)
    store = RunStore(run_dir)
    spec = store.load_spec_dict()  # a one-line error if this is no run directory
    report = _load_report(store)
    store.partial = bool(report.get("partial"))
    rows = Rows(store.files(), list(spec.get("axes", {})))
    verified = "verified_bugs" in report
    flagged = [{"index": i, "name": slice_name(s["predicates"]), **s}
               for i, s in enumerate(report["flagged_slices"], 1)]
    return {
        "summary": _summary(report, spec, run_dir),
        "verified": verified,
        "bugs": [{"index": i, **b} for i, b in enumerate(report.get("verified_bugs", []), 1)],
        "flagged": flagged,
        "bug_cards": _bug_cards(report, run_dir, spec) if verified else [],
        "slice_cards": [] if verified else _slice_cards(report, rows),
        "plots": _plots(report, rows, spec),
        "hypotheses": _tested(report.get("hypotheses", [])),
        "search": report.get("search", {}),
        "discovery": report.get("discovery", {}),
        "verification": report.get("verification"),
    }

