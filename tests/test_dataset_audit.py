"""Audits of real images end to end: a Parquet table of digits whose metadata carries a planted
bug and a null column (the ``dataset`` generator, local executor), and the shipped digits
corruption job on a local Ray (the ``corruptions`` generator)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFilter

from vbugs_ray.flow import audit
from vbugs_ray.spec import load_spec, parse_spec
from vbugs_ray.store import RunStore

JOBS = Path(__file__).resolve().parent.parent / "jobs"


def _png(image: np.ndarray, blur: bool) -> bytes:
    picture = Image.fromarray(image).resize((16, 16), Image.Resampling.BILINEAR)
    if blur:
        picture = picture.filter(ImageFilter.GaussianBlur(2.5))
    buf = io.BytesIO()
    picture.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def digits_table(tmp_path_factory) -> Path:
    """The bundled digits as one Parquet table: a train/test split column, ``site`` (a, b, c:
    drawn independently of everything, a null axis) and ``scanner``: every training image and 70%
    of the test images from the new scanner, 30% of the test images from an old one that blurs
    them (the planted bug). Three test rows hold bytes that are no image, two a label not in the
    classes: kept, marked invalid, counted."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(7)
    n = len(digits.target)
    split = np.where(rng.random(n) < 0.5, "train", "test")
    old = (split == "test") & (rng.random(n) < 0.3)
    images = [_png(np.round(im * 255 / 16).astype(np.uint8), blur) for im, blur in zip(digits.images, old)]
    labels = digits.target.astype(np.int64).copy()
    test_rows = np.flatnonzero(split == "test")
    for i in test_rows[:3]:
        images[i] = b"\x89PNG but not really"
    labels[test_rows[3:5]] = 11
    path = tmp_path_factory.mktemp("digits-table") / "digits.parquet"
    pq.write_table(pa.table({"image": pa.array(images, pa.binary()), "label": labels, "split": split,
                             "site": rng.choice(["a", "b", "c"], n), "scanner": np.where(old, "old", "new")}),
                   path, row_group_size=256)
    return path


@pytest.mark.trains
def test_dataset_audit_finds_the_planted_metadata_bug_and_not_the_null_one(digits_table, tmp_path, monkeypatch):
    from vbugs_ray.datasets.sources import ParquetImages

    listed = []
    list_table = ParquetImages.listing
    monkeypatch.setattr(ParquetImages, "listing", lambda self: listed.append(1) or list_table(self))
    spec = parse_spec({
        "name": "digits-table", "classes": [str(i) for i in range(10)], "axes": "auto",
        "generator": {"backend": "dataset", "options": {
            "source": {"format": "parquet", "path": str(digits_table), "split_column": "split", "size": 16},
            "held_out": 0.4}},
        "classifier": {"backend": "data_cnn", "options": {"epochs": 8}},
        "embedder": {"backend": "data_clip", "options": {"steps": 40, "pool": 600}},
        "captioner": {"backend": "retrieval"},
        "search": {"min_support": 15, "max_order": 2},
        "verify": {"images_per_hypothesis": 60, "max_hypotheses": 8},
        "run": {"executor": "local", "shard_rows": 256}})
    report = audit(spec, tmp_path / "run", progress=lambda _: None)

    assert report["read_from_dataset"] is True
    assert len(listed) == 1  # rows, models, search and verification from one read of the table's listing
    reasons = report["filter"]["invalid_reasons"]
    assert reasons.get("unknown_label", 0) + reasons.get("unreadable_image", 0) >= 1  # some may be held out
    assert set(reasons) <= {"unknown_label", "unreadable_image"}
    named = [dict(s["predicates"]) for s in report["flagged_slices"]]
    assert {"scanner": "old"} in named  # the planted bug, on its own
    assert not any(set(p) == {"site"} for p in named)  # site is independent of the errors: never flagged alone
    tested = {h["key"]: h["predicates"] for h in report["hypotheses"]}
    bugs = [tested[b["hypothesis"]] for b in report["verified_bugs"]]
    assert any(b.get("scanner") == "old" for b in bugs), report["verified_bugs"]
    assert not any(b.get("site") and "scanner" not in b for b in bugs)
    assert not any("counterfactuals" in b for b in report["verified_bugs"])  # a dataset's images cannot be changed

    # verification read held-out images only
    audited = set(RunStore(tmp_path / "run").read(columns=["source"]).column("source").to_pylist())
    fresh = set()
    for rows in (tmp_path / "run" / "verify").glob("*/round-*/rows"):
        fresh |= set(pq.read_table(rows, columns=["source"]).column("source").to_pylist())
    assert fresh and not fresh & audited
    html = (tmp_path / "run" / "report.html").read_text()
    assert "read" in html and "marked invalid" in html and "scanner old" in html


@pytest.mark.ray
@pytest.mark.trains
def test_digits_corruption_job_on_ray(ray_session, tmp_path):
    data = load_spec(JOBS / "digits_corruptions.yaml").to_dict()
    data["embedder"]["options"] = {"steps": 150, "pool": 3000}
    data["verify"] = {"images_per_hypothesis": 30, "max_hypotheses": 8}
    data["run"]["shard_rows"] = 256
    report = audit(parse_spec(data), tmp_path / "run", progress=lambda _: None)

    assert report["n_images"] == 10 * 7 * 2 * 4
    assert json.loads((tmp_path / "run" / "loads.json").read_text()) == {"generator": 1, "embedder": 1,
                                                                         "classifier": 1}
    top = [dict(s["predicates"]) for s in report["flagged_slices"][:5]]
    assert any("corruption" in p for p in top)
    assert report["verified_bugs"], "a CNN trained on clean digits fails under some corruption"
    for bug in report["verified_bugs"]:
        assert bug["n"] <= round(0.3 * 92)  # at most a digit's held-out test images (of <= 92), each once
    # counterfactuals: the same held-out image under another corruption or severity
    paired = [b for b in report["verified_bugs"] if b.get("counterfactuals")]
    assert paired, [b["description"] for b in report["verified_bugs"]]
    folder = tmp_path / "run" / "verify" / report["verification"]["folder"].rsplit("/", 1)[1]
    made = {r["row_id"]: r for r in pq.read_table(folder / "counterfactual" / "plan.parquet").to_pylist()}
    shown = {r["row_id"]: r for d in folder.glob("round-*") for r in pq.read_table(d / "plan.parquet").to_pylist()}
    for change in paired[0]["counterfactuals"]:
        for failing, changed in change["pairs"]:
            assert made[changed]["source"] == shown[failing]["source"] and made[changed]["seed"] == shown[failing]["seed"]
    assert (tmp_path / "run" / "report.html").stat().st_size > 10_000


FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


@pytest.mark.cli
@pytest.mark.trains
@pytest.mark.timeout(900)  # about 4 minutes on 2 cores with an empty cache (both models train first)
@pytest.mark.skipif(not FASHION.exists(), reason="Fashion-MNIST is not installed (sudo apt-get install "
                                                  "dataset-fashion-mnist; .ci/run installs it)")
def test_fashion_mnist_job_as_shipped(tmp_path):
    """The shipped job, as a user runs it (the vbugs command, a local Ray): flagged slices,
    verified bugs, and a report with galleries of real failing test images."""
    import subprocess
    import sys

    run_dir = tmp_path / "fashion"
    done = subprocess.run([sys.executable, "-m", "vbugs_ray.cli", "audit", str(JOBS / "fashion_mnist.yaml"),
                           "--out", str(run_dir)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["n_images"] == 6300 and report["read_from_dataset"]
    assert len(report["flagged_slices"]) >= 5 and len(report["verified_bugs"]) >= 3
    named = [dict(s["predicates"]) for s in report["flagged_slices"]]
    assert any(p.get("corruption") and p.get("severity") for p in named)
    html = (run_dir / "report.html").read_text()
    assert html.count('class="gallery') >= 2 * len(report["verified_bugs"][:3])
    assert html.count("data:image/jpeg;base64") >= 20


@pytest.mark.trains
def test_a_sweep_over_a_dataset_reads_each_image_once_for_every_model(tmp_path):
    """Two CNNs on the digits job's corrupted images: the first run reads and corrupts them, the
    other scores the stored rows; both reports, and a comparison, come out."""
    import yaml

    from vbugs_ray.sweep import parse_sweep, run_sweep

    audit = yaml.safe_load((JOBS / "digits_corruptions.yaml").read_text())
    audit.update(verify=False, captioner=None)
    audit["embedder"]["options"] = {"steps": 20, "pool": 300}
    audit["run"] = {"executor": "local", "shard_rows": 256}
    (tmp_path / "audit.yaml").write_text(yaml.safe_dump(audit))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({
        "name": "digits-sweep", "audit": "audit.yaml", "output_dir": str(tmp_path / "sweep"),
        "classifiers": {"narrow": {"backend": "data_cnn", "options": {"epochs": 1, "width": 8}},
                        "wide": {"backend": "data_cnn", "options": {"epochs": 4, "width": 32}}}}))
    result = run_sweep(parse_sweep(tmp_path / "sweep.yaml"), progress=lambda _: None)
    root = tmp_path / "sweep"
    assert json.loads((root / "wide" / "loads.json").read_text()) == {"generator": 0, "embedder": 0, "classifier": 1}
    columns = ["row_id", "source", "image_png"]
    narrow = pq.read_table(root / "narrow" / "rows", columns=columns).sort_by("row_id")
    wide = pq.read_table(root / "wide" / "rows", columns=columns).sort_by("row_id")
    assert narrow.num_rows == 560 and narrow.equals(wide)  # the same images, read once, scored twice
    assert list(result["classifiers"]) == ["narrow", "wide"] and result["slices"]
    contrast = next(row for row in result["slices"] if row["predicates"] == {"corruption": "contrast"})
    assert contrast["models"]["narrow"]["n"] == contrast["models"]["wide"]["n"] == 80
