"""Hypotheses from the run store, from five sources, each a description plus the failures it covers:

- ``slice``: the flagged slices (a slice that names axis values is its own description; a slice
  that names only a class is described by captioning its failures against the class's successes);
- ``class_slice``: slices searched within each class against the rest of that class, so that a
  failure of an easy class is not hidden by the run's harder classes;
- ``cluster``: error-aware failure groups in CLIP space, per class (discover.groups);
- ``direction``: the class's rows furthest along its failure direction (discover.directions);
- ``diagnosis``: the vocabulary's phrases that the diagnosis ensemble predicts raise the class's
  loss most (discover.diagnosis, LLM2Loss), queried through the embedder's text encoder.

Clusters and directions are described by contrast: the captioner sees a sample of the group's
failing images and of the same class's correctly classified images, and returns the phrases that
set the failures apart (not the phrases that are merely frequent).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from vbugs_ray.caption import caption_sets, sample_size
from vbugs_ray.discover.diagnosis import DiagnosisEnsemble, fit_finite, fit_per_class
from vbugs_ray.discover.directions import failure_directions
from vbugs_ray.discover.groups import failure_groups
from vbugs_ray.roles.vocabulary import axis_of_phrase, candidate_phrases
from vbugs_ray.slices.search import search_slices
from vbugs_ray.spec import AuditSpec
from vbugs_ray.store import RunStore
from vbugs_ray.verify.hypotheses import Hypothesis, draw_prompts, split_phrases

Progress = Callable[[str], None]
SOURCES = ("slice", "class_slice", "cluster", "direction", "diagnosis")
CLASS_SLICES = 3  # per class, best first
MIN_AUC = 0.6  # a failure direction weaker than this describes noise
PROMPTS_PER_PHRASE = 16  # prompt ensemble per (class, phrase) text query


@dataclass
class RunRows:
    """The run's valid rows as arrays (the CLIP filter's invalid rows are left out)."""

    row_ids: np.ndarray
    classes: np.ndarray
    errors: np.ndarray
    losses: np.ndarray
    preds: np.ndarray
    features: dict[str, np.ndarray]
    embeddings: np.ndarray

    @classmethod
    def load(cls, store: RunStore, spec: AuditSpec) -> "RunRows":
        table = store.read_valid(["row_id", "class", "error", "loss", "pred", "embedding", *spec.axis_names])
        emb = table.column("embedding").combine_chunks()
        embeddings = emb.flatten().to_numpy().reshape(len(emb), emb.type.list_size).astype(np.float32)

        def col(name: str) -> np.ndarray:
            return table.column(name).to_numpy(zero_copy_only=False)

        return cls(col("row_id").astype(np.int64), col("class").astype(str), col("error").astype(bool),
                   col("loss").astype(np.float64), col("pred").astype(str),
                   {a: col(a).astype(str) for a in spec.axis_names}, embeddings)


def _ranked(hypotheses: list[Hypothesis]) -> list[Hypothesis]:
    """Priors by rank within a source, so that sources interleave when hypotheses are chosen."""
    return [replace(h, prior=-float(i)) for i, h in enumerate(hypotheses)]


def _failing(rows: RunRows, mask: np.ndarray) -> tuple[int, ...]:
    return tuple(rows.row_ids[mask & rows.errors].tolist())


class Describer:
    """Collects (inside, reference) contrasts and captions them in one pass over the store."""

    def __init__(self, store: RunStore, spec: AuditSpec, rows: RunRows, embedder: Any, seed: int,
                 progress: Callable[[str], None] = lambda _: None):
        self.store, self.spec, self.rows, self.progress = store, spec, rows, progress
        self.embedder, self.rng = embedder, np.random.default_rng([seed, 77])
        self.pending: list[tuple[Hypothesis, np.ndarray, np.ndarray]] = []

    def add(self, template: Hypothesis, failing_idx: np.ndarray) -> None:
        """Describe ``failing_idx`` (row indexes, failures of the template's class) against the
        class's correctly classified rows."""
        if self.spec.captioner is None or len(failing_idx) == 0:
            return
        k = sample_size(self.spec)
        correct = np.nonzero((self.rows.classes == template.class_name) & ~self.rows.errors)[0]
        if len(correct) == 0:
            return
        inside = self.rows.row_ids[self.rng.permutation(failing_idx)[:k]]
        reference = self.rows.row_ids[self.rng.permutation(correct)[:k]]
        self.pending.append((template, inside, reference))

    def describe(self) -> list[Hypothesis]:
        if not self.pending:
            return []
        captions = caption_sets(self.store, self.spec, [(inside, ref) for _, inside, ref in self.pending],
                                self.embedder, self.progress)
        out = []
        for (template, _, _), phrases in zip(self.pending, captions):
            predicates, free = split_phrases(self.spec, list(phrases))
            predicates = tuple(sorted({**dict(template.predicates), **dict(predicates)}.items(),
                                      key=lambda p: self.spec.axis_names.index(p[0])))
            if predicates or free:
                source = dict(template.sources[0], caption=list(phrases))
                out.append(replace(template, predicates=predicates, phrases=free, sources=(source,)))
        return out


def from_slices(flagged: list[dict], rows: RunRows, spec: AuditSpec, describer: Describer, top_k: int
                ) -> list[Hypothesis]:
    """Flagged slices as hypotheses; a slice without a class is tested in its most failing class."""
    out = []
    for item in flagged[:top_k]:
        preds = dict(item["predicates"])
        mask = np.ones(len(rows.row_ids), bool)
        for name, value in preds.items():
            mask &= (rows.classes if name == "class" else rows.features[name]) == value
        class_name = preds.pop("class", None)
        if class_name is None:
            failing_classes = rows.classes[mask & rows.errors]
            if len(failing_classes) == 0:
                continue
            names, counts = np.unique(failing_classes, return_counts=True)
            class_name = str(names[np.argmax(counts)])
            mask &= rows.classes == class_name
        source = {"kind": "slice", "predicates": item["predicates"], "n": item["n"],
                  "error_rate": item["error_rate"], "q_value": item["q_value"]}
        order = spec.axis_names
        h = Hypothesis(class_name, tuple(sorted(preds.items(), key=lambda p: order.index(p[0]))),
                       sources=(source,), failing_rows=_failing(rows, mask))
        if preds:
            out.append(h)
        else:
            describer.add(h, np.nonzero(mask & rows.errors)[0])
    return out


def from_class_slices(rows: RunRows, spec: AuditSpec, per_class: int = CLASS_SLICES) -> list[Hypothesis]:
    """Each class's own slice search over the axes (the spec's search settings: null, the slice
    of the class fails no more often than the rest of the class; BH over the class's lattice),
    which is the verification's question. The run-wide search compares a slice with every other
    image, so a class that fails less than the run's average hides its slices there. The best
    ``per_class`` slices of each class that no stronger slice explains, taken round-robin over
    the classes (each class's first, then each class's second...), so every class is heard."""
    by_class: list[list[tuple[float, Hypothesis]]] = []
    for class_name in spec.classes if spec.axes else ():  # a class-only audit has no slice within a class
        in_class = rows.classes == class_name
        if rows.errors[in_class].sum() < spec.verify.min_errors:
            continue
        result = search_slices({a: rows.features[a][in_class] for a in spec.axis_names}, rows.errors[in_class],
                               spec.search)
        found = []
        for item in [f for f in result.flagged if f["explained_by"] is None][:per_class]:
            mask = in_class.copy()
            for axis, value in item["predicates"].items():
                mask &= rows.features[axis] == value
            source = {"kind": "class_slice", "predicates": item["predicates"], "n": item["n"],
                      "error_rate": item["error_rate"], "rest_of_class": item["complement_error_rate"],
                      "q_value": item["q_value"]}
            preds = tuple(sorted(item["predicates"].items(), key=lambda p: spec.axis_names.index(p[0])))
            found.append((item["p_value"], Hypothesis(class_name, preds, sources=(source,),
                                                      failing_rows=_failing(rows, mask))))
        by_class.append(found)
    out = []
    for rank in range(per_class):
        out += [h for _, h in sorted((found[rank] for found in by_class if len(found) > rank), key=lambda x: x[0])]
    return out


def from_groups(rows: RunRows, settings, describer: Describer, seed: int) -> list[dict]:
    """Failure groups in CLIP space, each queued for a contrast caption; returns their summaries."""
    groups = failure_groups(rows.embeddings, rows.errors, rows.classes, rows.preds, rows.features,
                            max_k=settings.max_groups, min_errors=settings.min_errors, seed=seed)
    for i, group in enumerate(groups):
        idx = np.asarray(group.rows, np.int64)
        failing = idx[rows.errors[idx]]
        source = {"kind": "cluster", "group": i, "n": group.n, "error_rate": group.error_rate,
                  "class_error_rate": group.class_error_rate}
        describer.add(Hypothesis(group.class_name, (), sources=(source,),
                                 failing_rows=tuple(rows.row_ids[failing].tolist())), failing)
    return [g.to_dict() for g in groups]


def from_directions(rows: RunRows, settings, describer: Describer, seed: int) -> list[dict]:
    """Failure directions: the failing rows furthest along each (held-out AUC >= MIN_AUC)."""
    directions = failure_directions(rows.embeddings, rows.errors, rows.classes, min_errors=settings.min_errors,
                                    seed=seed)
    for direction in directions:
        if direction.auc < MIN_AUC:
            continue
        idx = np.asarray(direction.rows, np.int64)
        failing = idx[rows.errors[idx]]
        source = {"kind": "direction", "auc": direction.auc, "error_rate": direction.error_rate,
                  "class_error_rate": direction.class_error_rate}
        describer.add(Hypothesis(direction.class_name, (), sources=(source,),
                                 failing_rows=tuple(rows.row_ids[failing].tolist())), failing)
    return [d.to_dict() for d in directions]


def text_queries(spec: AuditSpec, embedder: Any, class_name: str, phrases: list[str], seed: int) -> np.ndarray:
    """One text embedding per phrase: the mean over a prompt ensemble of the class's prompts with
    the phrase in them (fixed as its axis value, or appended), renormalised. Index 0 is the class
    alone (no phrase)."""
    by_phrase = axis_of_phrase(spec)
    rng = np.random.default_rng([seed, 99])
    texts: list[str] = []
    for phrase in [None, *phrases]:
        predicates, free = ({}, ())
        if phrase is not None:
            predicates, free = ({by_phrase[phrase][0]: by_phrase[phrase][1]}, ()) if phrase in by_phrase \
                else ({}, (phrase,))
        texts += draw_prompts(spec, class_name, predicates, free, rng, PROMPTS_PER_PHRASE)[0]
    emb = np.asarray(embedder.embed_texts(texts), np.float64).reshape(len(phrases) + 1, PROMPTS_PER_PHRASE, -1)
    mean = emb.mean(axis=1)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def diagnose_vocabulary(rows: RunRows, spec: AuditSpec, embedder: Any, seed: int
                        ) -> tuple[DiagnosisEnsemble, list[dict], dict[tuple[str, str], np.ndarray], dict]:
    """Fit the diagnosis ensemble on (image embedding -> loss) over the run, and one per class on
    the class's rows: a bug is a failure of one class, and the run's ensemble mostly learns which
    classes are hard. Each class's ensemble ranks every phrase by the predicted loss it adds to
    the class alone. Returns the run's ensemble, the ranking (highest lift first), each (class,
    phrase) text embedding, and each class ensemble's summary."""
    ensemble = fit_finite(rows.embeddings, rows.losses, seed)
    phrases = candidate_phrases(spec, with_classes=False)
    models = fit_per_class(rows.embeddings, rows.losses, rows.classes, seed=seed)
    ranking, texts, by_class = [], {}, {}
    for class_name in [c for c in spec.classes if c in models]:
        model = models[class_name]
        by_class[class_name] = model.summary()
        emb = text_queries(spec, embedder, class_name, phrases, seed)
        # scored together: the modality-gap shift is taken over the class's whole vocabulary
        mean, spread = model.score_texts(emb)
        for j, phrase in enumerate(phrases, 1):
            ranking.append({"class": class_name, "phrase": phrase, "predicted_loss": float(mean[j]),
                            "spread": float(spread[j]), "lift": float(mean[j] - mean[0])})
            texts[(class_name, phrase)] = emb[j]
    ranking.sort(key=lambda r: -r["lift"])
    return ensemble, ranking, texts, by_class


def from_diagnosis(ranking: list[dict], texts: dict, rows: RunRows, spec: AuditSpec, limit: int) -> list[Hypothesis]:
    """The top (class, phrase) pairs by predicted lift; the failures they cover are the class's
    failing rows among its images closest to the phrase's text (the top tenth)."""
    out = []
    for item in [r for r in ranking if r["lift"] > 0][:limit]:
        class_name, phrase = item["class"], item["phrase"]
        predicates, free = split_phrases(spec, [phrase])
        in_class = np.nonzero(rows.classes == class_name)[0]
        sims = rows.embeddings[in_class] @ texts[(class_name, phrase)]
        near = in_class[np.argsort(-sims)[: max(1, len(in_class) // 10)]]
        source = {"kind": "diagnosis", "phrase": phrase, "predicted_loss": item["predicted_loss"],
                  "spread": item["spread"], "lift": item["lift"]}
        out.append(Hypothesis(class_name, predicates, free, sources=(source,),
                              failing_rows=tuple(rows.row_ids[near[rows.errors[near]]].tolist())))
    return out


RANKED_PER_CLASS = 10
HELD_OUT_POINTS = 500  # held-out (true, predicted) loss pairs kept for the report's plot


def _by_class(ranking: list[dict], top: int) -> dict[str, list[dict]]:
    """Each class's phrases, highest predicted lift first: what the ensemble says each class fears."""
    out: dict[str, list[dict]] = {}
    for item in ranking:
        phrases = out.setdefault(item["class"], [])
        if len(phrases) < top:
            phrases.append({"phrase": item["phrase"], "lift": item["lift"], "spread": item["spread"]})
    return out


def discover(store: RunStore, spec: AuditSpec, flagged: list[dict], embedder: Any, progress: Progress
             ) -> tuple[dict[str, list[Hypothesis]], dict]:
    """Every source's hypotheses (ranked within the source) and a summary for the report."""
    settings = spec.verify
    rows = RunRows.load(store, spec)
    progress(f"discovery over {len(rows.row_ids)} valid rows ({rows.embeddings.shape[1]}-d embeddings)")
    describer = Describer(store, spec, rows, embedder, spec.seed, progress)
    by_source: dict[str, list[Hypothesis]] = {s: [] for s in SOURCES}
    by_source["slice"] = from_slices(flagged, rows, spec, describer, spec.search.top_k)
    by_source["class_slice"] = from_class_slices(rows, spec)
    groups = from_groups(rows, settings, describer, spec.seed)
    directions = from_directions(rows, settings, describer, spec.seed)
    ensemble, ranking, texts, by_class = diagnose_vocabulary(rows, spec, embedder, spec.seed)
    by_source["diagnosis"] = from_diagnosis(ranking, texts, rows, spec, settings.max_hypotheses)
    for h in describer.describe():
        by_source[h.sources[0]["kind"]].append(h)
    by_source = {kind: _ranked(hs) for kind, hs in by_source.items()}
    summary = {"groups": groups, "directions": directions, "diagnosis": {**ensemble.summary(points=HELD_OUT_POINTS), "by_class": by_class},
               "vocabulary_ranking": ranking[:20], "vocabulary_ranking_by_class": _by_class(ranking, RANKED_PER_CLASS)}
    progress(f"discovery: {len(groups)} failure groups, {sum(d['auc'] >= MIN_AUC for d in directions)} failure "
             f"directions (AUC >= {MIN_AUC}), diagnosis ensemble held-out Spearman {ensemble.spearman:.2f} "
             f"(per class, median {np.median([c['spearman'] for c in by_class.values()] or [np.nan]):.2f}); "
             "hypotheses: " + ", ".join(f"{len(v)} {k}" for k, v in by_source.items()))
    return by_source, summary


def diagnose_phrases(store: RunStore, spec: AuditSpec, phrases: list[str], progress: Progress) -> dict:
    """``vbugs diagnose``: the ensemble's predicted loss (and spread across its members) for each
    phrase, embedded as written. Scored together with the audit's vocabulary, so that the
    modality-gap shift (DiagnosisEnsemble.score_texts) is taken over many phrases."""
    from vbugs_ray.roles import registry

    rows = RunRows.load(store, spec)
    ensemble = fit_finite(rows.embeddings, rows.losses, spec.seed)
    progress(f"diagnosis ensemble on {ensemble.n_train} rows: held-out R^2 {ensemble.r2:.3f}, "
             f"Spearman {ensemble.spearman:.3f} ({ensemble.n_test} rows)")
    registry.prepare("embedder", spec.embedder, spec, progress)
    embedder = registry.create("embedder", spec.embedder, spec)
    reference = list(dict.fromkeys(candidate_phrases(spec) + list(phrases)))
    mean, spread = ensemble.score_texts(np.asarray(embedder.embed_texts(reference), np.float64))
    pick = [reference.index(p) for p in phrases]
    mean, spread = mean[pick], spread[pick]
    return {"run_mean_loss": float(np.nanmean(rows.losses)), "diagnosis": ensemble.summary(),
            "phrases": [{"phrase": p, "predicted_loss": float(m), "spread": float(s)}
                        for p, m, s in zip(phrases, mean, spread)]}
