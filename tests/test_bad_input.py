"""Mistakes that used to pass unseen: NaN or infinity in a spec or a search flag, a key given
twice in a spec file, and NaN in the JSON the project writes. Each is one line on stderr and
exit status 2, or strict JSON with null."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from vbugs_ray.atomic import atomic_write_json
from vbugs_ray.jsontext import to_json
from vbugs_ray.spec import DEFAULT_SPEC, load_spec, parse_spec


def _vbugs(*args):
    return subprocess.run([sys.executable, "-m", "vbugs_ray.cli", *args], capture_output=True, text=True)


def _one_line_error(done) -> str:
    """The single stderr line of a refused command (exit 2, no traceback)."""
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


def _strict_loads(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity, as strict parsers do."""
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


# -- spec files ----------------------------------------------------------------------------

def _set(spec_dict: dict, path: str, value) -> str:
    node = spec_dict
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return yaml.safe_dump(spec_dict, sort_keys=False)


def _bad_specs():
    """case -> (spec text from the default spec mapping, the field the error must name, words)."""
    nan, inf = float("nan"), float("inf")
    return {
        "search_alpha_nan": (lambda d: _set(d, "search.alpha", nan), "search.alpha", "finite number; got nan"),
        "search_min_effect_inf": (lambda d: _set(d, "search.min_effect", inf), "search.min_effect",
                                  "finite number; got inf"),
        "role_num_cpus_nan": (lambda d: _set(d, "classifier.num_cpus", nan), "classifier.num_cpus",
                              "finite number; got nan"),
        "filter_minus_inf": (lambda d: _set(d, "filter.min_class_similarity", -inf), "filter.min_class_similarity",
                             "finite number; got -inf"),
        "axis_value_inf": (lambda d: _set(d, "axes.background", ["grass", inf]), "axes.background[1]",
                           "finite number; got inf"),
        "duplicate_top_key": (lambda d: yaml.safe_dump(d, sort_keys=False) + "budget: 100\n", "budget",
                              "given twice (lines "),
        "duplicate_nested_key": (lambda d: yaml.safe_dump(d, sort_keys=False).replace(
            "\nsearch:\n", "\nsearch:\n  alpha: 0.5\n"), "search.alpha", "given twice (lines "),
    }


@pytest.mark.cli
@pytest.mark.parametrize("command", ["validate", "audit"])
@pytest.mark.parametrize("case", sorted(_bad_specs()))
def test_a_bad_spec_file_is_one_line_naming_the_field(case, command, spec_dict, tmp_path):
    write, field, words = _bad_specs()[case]
    spec = tmp_path / "spec.yaml"
    spec.write_text(write(spec_dict))
    run_dir = tmp_path / "run"
    done = _vbugs(command, str(spec), *(["--out", str(run_dir), "--executor", "local"] if command == "audit" else []))
    line = _one_line_error(done)
    assert f"spec field '{field}':" in line and words in line, line
    assert not (run_dir / "spec.json").exists() and not (run_dir / "rows").exists()  # refused before any work


def test_the_duplicate_key_error_gives_both_lines(spec_dict, tmp_path):
    spec = tmp_path / "spec.yaml"
    text = yaml.safe_dump(spec_dict, sort_keys=False)
    first = 1 + text.splitlines().index(f"budget: {spec_dict['budget']}")
    spec.write_text(text + "budget: 100\n")
    last = len(spec.read_text().splitlines())
    with pytest.raises(Exception, match=rf"spec field 'budget': given twice \(lines {first} and {last}\)"):
        load_spec(spec)


def test_a_spec_file_reads_as_safe_load_reads_it(spec_dict, tmp_path):
    """The duplicate-key check changes nothing else: the default spec reads as before, and a key
    that a mapping sets over a merged one (``<<: *anchor``) is an override, not a duplicate."""
    assert load_spec(DEFAULT_SPEC) == parse_spec(yaml.safe_load(DEFAULT_SPEC.read_text()), source=str(DEFAULT_SPEC))
    spec_dict["embedder"] = {"backend": "toyworld_clip", "batch_size": 64}
    spec_dict["captioner"] = {"concurrency": 2}
    spec = tmp_path / "merged.yaml"
    spec.write_text(yaml.safe_dump(spec_dict, sort_keys=False)
                    .replace("\nembedder:\n", "\nembedder: &embedder\n")
                    .replace("\ncaptioner:\n", "\ncaptioner:\n  <<: *embedder\n  backend: retrieval\n"))
    loaded = load_spec(spec)
    assert (loaded.captioner.backend, loaded.captioner.batch_size, loaded.captioner.concurrency) == ("retrieval", 64, 2)


# -- search flags --------------------------------------------------------------------------

N = 600


def _table(path, loss=None) -> str:
    """A tiny table: two features, an error frequent where a=x, and optionally a loss column."""
    rng = np.random.default_rng(0)
    a = rng.choice(["x", "y", "z"], N)
    b = rng.choice(["p", "q"], N)
    error = np.where(a == "x", rng.random(N) < 0.6, rng.random(N) < 0.05)
    columns = {"a": a, "b": b, "error": error}
    if loss is not None:
        columns["loss"] = loss
    pq.write_table(pa.table(columns), path)
    return str(path)


@pytest.mark.cli
@pytest.mark.parametrize("flag, value, words", [
    ("--alpha", "nan", "finite number; got nan"),
    ("--min-effect", "inf", "finite number; got inf"),
    ("--alpha", "-inf", "finite number; got -inf"),
    ("--alpha", "2", "must be <= 1"),
])
def test_a_bad_search_flag_is_one_line_naming_the_flag(flag, value, words, tmp_path):
    done = _vbugs("slices", "--table", _table(tmp_path / "t.parquet"), f"{flag}={value}")  # = lets -inf be a value
    line = _one_line_error(done)
    assert f"{flag}: " in line and words in line, line


# -- JSON ----------------------------------------------------------------------------------

def test_written_json_is_strict_with_null_for_non_finite_numbers(tmp_path):
    report = {"loss_mean": float("nan"), "numpy": np.float64("inf"), "f32": np.float32("nan"),
              "nested": [{"x": -float("inf"), "ok": 1.5}, (np.int64(3), np.bool_(True))],
              "array": np.array([1.0, np.nan, np.inf]), "ints": np.arange(2), "path": tmp_path,
              np.int64(7): "numpy key"}
    path = atomic_write_json(tmp_path / "report.json", report)
    for text in (path.read_text(), to_json(report, indent=None)):
        assert _strict_loads(text) == {"loss_mean": None, "numpy": None, "f32": None,
                                       "nested": [{"x": None, "ok": 1.5}, [3, True]],
                                       "array": [1.0, None, None], "ints": [0, 1], "path": str(tmp_path),
                                       "7": "numpy key"}


@pytest.mark.cli
def test_slices_out_with_nan_losses_is_strict_json(tmp_path):
    loss = np.ones(N)
    loss[::7] = np.nan
    out = tmp_path / "out.json"
    done = _vbugs("slices", "--table", _table(tmp_path / "t.parquet", loss), "--loss-col", "loss",
                  "--features", "a,b", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    report = _strict_loads(out.read_text())
    assert report["flagged_slices"] and report["flagged_slices"][0]["loss_mean"] is None


@pytest.mark.cli
def test_discover_prints_and_writes_strict_json_when_a_statistic_is_undefined(tmp_path):
    """A constant loss column leaves the diagnosis ensemble's Spearman correlation undefined."""
    rng = np.random.default_rng(0)
    n, dim = 800, 8
    x = rng.normal(size=(n, dim)).astype(np.float32)
    error = rng.random(n) < np.where(x[:, 0] > 1, 0.7, 0.05)
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim),
                             "error": error, "loss": np.ones(n)}), table)
    out = tmp_path / "found.json"
    done = _vbugs("discover", "--table", str(table), "--class-col", "", "--loss-col", "loss", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    printed = _strict_loads(done.stdout)
    assert printed == _strict_loads(out.read_text()) and printed["diagnosis"]["spearman"] is None


@pytest.mark.cli
def test_learn_tokens_refuses_a_learning_rate_that_is_not_a_number(tmp_path):
    done = _vbugs("learn-tokens", "--model", "m", "--images", str(tmp_path), "--token", "<t>", "--init-word", "fish",
                  "--out", str(tmp_path / "t.safetensors"), "--lr", "nan")
    line = _one_line_error(done)
    assert "--lr: must be a finite number; got nan" in line, line
