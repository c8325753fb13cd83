"""Mistakes that used to pass unseen: NaN or infinity in a spec or a search flag, a key given
twice in a spec file, and NaN in the JSON the project writes; and spec files that used to stop
with a traceback: not UTF-8, a grid too large for memory, a seed out of range, an unsafe YAML
tag, an empty file. Each is one line on stderr and exit status 2, or strict JSON with null."""

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


# -- spec files that stopped with a traceback ----------------------------------------------

DEFAULT_TEXT = DEFAULT_SPEC.read_text()
SEED_LINE = 1 + DEFAULT_TEXT.splitlines().index("seed: 0")


def _dump(spec_dict: dict) -> bytes:
    return yaml.safe_dump(spec_dict, sort_keys=False, allow_unicode=True).encode()


def _with(path: str, value):
    """The default spec mapping with ``path`` set to ``value``, as file bytes."""
    return lambda d: _set(d, path, value).encode()


def _text_with(old: str, new: str):
    """The default spec file with one line changed, as bytes."""
    assert old in DEFAULT_TEXT
    return lambda d: DEFAULT_TEXT.replace(old, new).encode()


def _many_cells(d: dict) -> bytes:
    """Nine axes of ten values: 6 x 10**9 cells."""
    d["axes"] = {f"axis{i}": [f"v{j}" for j in range(10)] for i in range(9)}
    d["prompt"] = "a {class} " + " ".join(f"{{axis{i}}}" for i in range(9))
    return _dump(d)


def _edge_specs():
    """case -> (spec file bytes from the default spec mapping, the field the error must name, words)."""
    long_key = {"search": {"k" * 5000: 1}}
    return {
        # not UTF-8
        "latin1": (lambda d: _dump(dict(d, name="café")).decode().encode("latin-1"), "<file>",
                   "is not UTF-8 text (byte 0xe9 at offset 9, line 1); save it as UTF-8"),
        "utf16_bom": (lambda d: _dump(d).decode().encode("utf-16"), "<file>", "is UTF-16 text"),
        "binary": (lambda d: bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)), "<file>",
                   "is not UTF-8 text (byte 0x"),
        # the grid must fit in memory
        "budget_10_12": (_with("budget", 10**12), "budget", "must be <= 100000000; got 1000000000000"),
        "budget_2_70": (_with("budget", 2**70), "budget", "must be <= 100000000; got 1180591620717411303424"),
        "budget_1e12_text": (_text_with("budget: 7200", "budget: 1e12"), "budget",
                             "expected an integer; got '1e12' (YAML reads 1e12 as text; write 1000000000000)"),
        "images_per_cell": (_text_with("budget: 7200", "images_per_cell: 1000000"), "images_per_cell",
                            "in each of 720 cells make 720000000 rows; at most 100000000"),
        "cells": (_many_cells, "axes", "make 6000000000 cells; at most 100000000"),
        # seeds: 0 to 2**32 - 1 (numpy's and scikit-learn's range)
        "seed_2_64": (_with("seed", 2**64), "seed", "must be an integer from 0 to 4294967295; got 18446744073709551616"),
        "seed_2_32": (_with("seed", 2**32), "seed", "must be an integer from 0 to 4294967295; got 4294967296"),
        "seed_negative": (_with("seed", -1), "seed", "must be an integer from 0 to 4294967295; got -1"),
        "backend_seed": (_with("classifier.options.seed", 2**64), "classifier.options.seed",
                         "must be an integer from 0 to 4294967295"),
        "integer_past_64_bits": (_with("classifier.options.epochs", 2**70), "classifier.options.epochs",
                                 "must fit in 64 bits"),
        # a field of the wrong type
        "ray_address_number": (_with("run.ray_address", 6379), "run.ray_address",
                               "expected a non-empty string; got 6379"),
        "ray_address_list": (_with("run.ray_address", ["a", "b"]), "run.ray_address",
                             "expected a non-empty string; got ['a', 'b']"),
        "dtype_list": (_with("classifier.dtype", ["fp16"]), "classifier.dtype", "expected float32, float16"),
        # tags that safe_load does not build
        "python_object": (_text_with("seed: 0", "seed: !!python/object/apply:os.system [echo hi]"), "seed",
                          f"unsafe YAML tag !!python/object/apply:os.system at line {SEED_LINE}; "
                          f"a spec holds plain data: remove the tag"),
        "python_name": (_text_with("seed: 0", "seed: !!python/name:os.system"), "seed",
                        f"unsafe YAML tag !!python/name:os.system at line {SEED_LINE}"),
        "unknown_tag": (_text_with("seed: 0", "seed: !seed 1"), "seed", f"unknown YAML tag !seed at line {SEED_LINE}"),
        # nothing in the file
        "empty": (lambda d: b"", "<file>", "the spec is empty"),
        "comments_only": (lambda d: b"# an audit\n\n   # to come\n", "<file>", "the spec is empty"),
        # long values are cut, keys with line breaks escaped
        "long_value": (_with("sampling", "x" * 5000), "sampling", "unknown value 'xxxxxxxx"),
        "long_key": (lambda d: _dump({**d, **long_key}), "search.kkkkkkkk", "unknown key; allowed: alpha"),
        "newline_key": (lambda d: _dump({**d, "a\nb": 1}), "a\\nb", "unknown key"),
        # YAML that PyYAML reads but Python cannot build, or that refers to itself
        "huge_integer_text": (_text_with("seed: 0", "seed: " + "9" * 5000), "seed",
                              f"YAML cannot read the value at line {SEED_LINE}"),
        "self_alias": (_text_with("seed: 0", "seed: &s [1, *s]"), "seed[1]", "refers to itself"),
        "prompt_format": (_with("prompt", "a {colour:d} {class} on {background} {lighting}"), "prompt",
                          "not a valid template (Unknown format code 'd'"),
    }


@pytest.mark.cli
@pytest.mark.parametrize("case", sorted(_edge_specs()))
def test_a_spec_file_that_used_to_stop_with_a_traceback_is_one_line(case, spec_dict, tmp_path):
    """In process (what `vbugs validate` runs) and from the command line: one line naming the
    field, under 300 characters, with no traceback."""
    from vbugs_ray.cli import validate
    from vbugs_ray.errors import SpecError

    write, field, words = _edge_specs()[case]
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(write(spec_dict))
    with pytest.raises(SpecError) as err:
        validate(str(spec))
    message = str(err.value)
    assert message.startswith(f"spec field '{field}") and words in message, message
    assert "\n" not in message and len(message) < 300, message
    line = _one_line_error(_vbugs("validate", str(spec)))
    assert line == f"vbugs: error: {message}"


def test_long_values_are_cut_in_error_lines(spec_dict):
    from vbugs_ray.errors import SpecError, quote

    assert quote("x" * 5000) == "'" + "x" * 56 + "..." and quote("short") == "'short'"
    assert quote(list(range(1000))).endswith("...") and len(quote(list(range(1000)))) == 60
    spec_dict["run"]["ray_address"] = ["head:6379"] * 500
    with pytest.raises(SpecError, match=r"got \['head:6379', .{30,}\.\.\.$"):
        parse_spec(spec_dict)


def test_the_limits_themselves_are_allowed(spec_dict):
    """The largest budget and seed pass; one more is refused."""
    from vbugs_ray.errors import SpecError
    from vbugs_ray.fields import SEED_MAX
    from vbugs_ray.spec import MAX_ROWS

    spec_dict.update(budget=MAX_ROWS, seed=SEED_MAX)
    assert (parse_spec(spec_dict).budget, parse_spec(spec_dict).seed) == (MAX_ROWS, 2**32 - 1)
    for key, value in (("budget", MAX_ROWS + 1), ("seed", SEED_MAX + 1)):
        with pytest.raises(SpecError, match=f"spec field '{key}'"):
            parse_spec(dict(spec_dict, **{key: value}))


def test_the_largest_seed_reaches_every_seeded_step():
    """A spec seed of 2**32 - 1 works in each place the seed goes: the grid's and verification's
    row seeds, numpy generators, and scikit-learn (failure groups, directions, the diagnosis
    ensemble), whose seeds stop at 2**32 - 1."""
    from vbugs_ray.discover import DiagnosisEnsemble, failure_directions, failure_groups
    from vbugs_ray.fields import SEED_MAX
    from vbugs_ray.grid import row_seeds
    from vbugs_ray.verify.plan import fresh_seeds

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8))
    classes = np.repeat(np.array(["a", "b"]), 200)
    errors = rng.random(400) < np.where(x[:, 0] > 0.5, 0.8, 0.1)
    seeds = row_seeds(SEED_MAX, np.arange(4), np.arange(4))
    assert seeds.min() >= 0 and seeds.max() < 2**31
    assert len(fresh_seeds(SEED_MAX, "0:key", 5, set())) == 5
    np.random.default_rng([SEED_MAX, 77])
    failure_groups(x, errors, classes, np.where(errors, "b", classes), seed=SEED_MAX, max_k=2)
    failure_directions(x, errors, classes, seed=SEED_MAX)
    DiagnosisEnsemble(members=2, max_rows=100, seed=SEED_MAX).fit(x, x[:, 0])


@pytest.mark.cli
@pytest.mark.parametrize("args", [
    ["discover", "--table", "t.parquet", "--seed", "-1"],
    ["learn-tokens", "--model", "m", "--images", ".", "--token", "<t>", "--init-word", "fish", "--out", "t.st",
     "--seed", str(2**64)],
])
def test_a_seed_flag_out_of_range_is_one_line(args):
    line = _one_line_error(_vbugs(*args))
    assert "--seed: must be an integer from 0 to 4294967295" in line, line
