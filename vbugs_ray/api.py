"""The Python API: what `vbugs audit` and `vbugs slices --table` do, callable from a team's own code.

    import vbugs_ray
    report = vbugs_ray.audit("my_audit.yaml", out="runs/mine")   # or a dict, or an AuditSpec
    report.verified_bugs[0]["description"]
    report.to_pandas()                                           # one row per bug (or flagged slice)
    vbugs_ray.search_table(predictions_df, error="wrong", features=["site", "camera"])
    vbugs_ray.register_backend("classifier", "mine", MyClassifier)  # then `backend: mine` in a spec

Mistakes raise the same one-line errors as the CLI (``vbugs_ray.errors``). Nothing heavy is
imported until a function is called: ``import vbugs_ray`` loads no torch and no Ray.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

Progress = Callable[[str], None]


@dataclass
class Report:
    """An audit's or a table search's report (``report.json``'s content) and where it was written."""

    data: dict
    path: Path | None = None
    kind: str = field(default="audit")

    @property
    def flagged_slices(self) -> list[dict]:
        return self.data.get("flagged_slices", [])

    @property
    def verified_bugs(self) -> list[dict]:
        return self.data.get("verified_bugs", [])

    @property
    def html_path(self) -> Path | None:
        """RUN_DIR/report.html, the page to open in a browser (an audit's report only)."""
        page = self.path.with_name("report.html") if self.path is not None and self.kind == "audit" else None
        return page if page is not None and page.exists() else None

    def to_dict(self) -> dict:
        return self.data

    def to_pandas(self):
        """One row per verified bug when the run verified any, else per flagged slice; the
        columns are the report's fields (row ids and per-axis counts left out: see ``to_dict``)."""
        import pandas as pd

        if self.verified_bugs:
            rows = [{k: v for k, v in bug.items() if k not in ("row_ids", "by_open_axis", "evidence")}
                    | {"evidence": [e["description"] for e in bug["evidence"]]} for bug in self.verified_bugs]
        else:
            rows = [{**{k: v for k, v in s.items() if k != "predicates"}, "slice": ", ".join(
                f"{k}={v}" for k, v in s["predicates"].items())} for s in self.flagged_slices]
        return pd.DataFrame(rows)

    def __str__(self) -> str:
        from vbugs_ray.report import format_bugs, format_slices

        text = format_slices(self.data)
        return text + ("\n\n" + format_bugs(self.data) if "verified_bugs" in self.data else "")

    def __repr__(self) -> str:
        what = (f"{len(self.verified_bugs)} verified bugs" if "verified_bugs" in self.data
                else f"{len(self.flagged_slices)} flagged slices")
        return f"<vbugs_ray.Report: {what}{f' at {self.path}' if self.path else ''}>"


def audit(spec: str | Path | Mapping | Any, out: str | Path | None = None,
          progress: Progress | None = None) -> Report:
    """Run a whole audit (rows, slice search, verification unless the spec says ``verify:
    false``) into ``out`` (default: the spec's ``output_dir``), resuming what a run there already
    holds. ``spec``: a YAML path, a mapping as the YAML would give, or an ``AuditSpec``."""
    from vbugs_ray.flow import audit as run_audit
    from vbugs_ray.roles.registry import validate_backends
    from vbugs_ray.spec import AuditSpec, load_spec, parse_spec

    if isinstance(spec, AuditSpec):
        parsed = spec
    elif isinstance(spec, Mapping):
        parsed = parse_spec(dict(spec))
    else:
        parsed = load_spec(spec)
    parsed = validate_backends(parsed)
    run_dir = Path(out or parsed.output_dir)
    data = run_audit(parsed, run_dir, progress=progress or (lambda _: None))
    return Report(data, run_dir / "report.json")


def search_table(table: str | Path | Any, error: str = "error", loss: str | None = None,
                 features: list[str] | None = None, out: str | Path | None = None, positive: str | None = None,
                 progress: Progress | None = None, **search: Any) -> Report:
    """The slice search over your own predictions: a Parquet file or folder, a pyarrow Table
    or a pandas DataFrame, one row per example, ``error`` its 0/1 (or true/false, or text with
    ``positive``) column; ``features`` the columns to slice on (default: all others that can
    be); ``search``: the spec's ``search`` options (``alpha``, ``max_order``, ``min_support``...)."""
    from vbugs_ray.slices.settings import SearchSettings
    from vbugs_ray.table import search_table as run_search

    settings = SearchSettings.parse(search)
    say = progress or (lambda _: None)
    if isinstance(table, (str, Path)):
        data = run_search(str(table), error, loss, features, settings, str(out) if out else None, say, positive)
        return Report(data, Path(out) if out else None, kind="table")
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = table if isinstance(table, pa.Table) else pa.Table.from_pandas(table, preserve_index=False)
    with tempfile.TemporaryDirectory() as tmp:  # the same checks and reader as a file on disk
        path = Path(tmp) / "table.parquet"
        pq.write_table(arrow, path)
        data = run_search(str(path), error, loss, features, settings, str(out) if out else None, say, positive)
    data["table"] = "<in memory>"
    return Report(data, Path(out) if out else None, kind="table")


def register_backend(role: str, name: str, backend: str | type) -> None:
    """Make ``backend`` (a class, or 'module:Class') available to specs as ``backend: name`` for
    ``role`` (generator, classifier, embedder, captioner). roles/protocols.py says what a
    backend provides; roles/registry.py, how it is built. It must be importable by Ray's workers
    (a module of an installed package, not a script's ``__main__``)."""
    from vbugs_ray.roles import registry

    registry.register(role, name, backend)
