"""Fuzzing the spec reader: a few hundred specs mutated from the default one (keys deleted, values
of another type, extreme numbers, huge strings, garbage spliced into the YAML text), each checked
in process by what `vbugs validate` runs (``cli.validate``). Each must pass, or stop with one of
USER_ERRORS whose message is one short line; anything else (a traceback) fails, showing the spec.
The same seed makes the same specs, so a failure is reproduced by running the test again."""

from __future__ import annotations

import copy
import datetime
import random
import subprocess
import sys

import pytest
import yaml

from vbugs_ray.cli import validate
from vbugs_ray.errors import USER_ERRORS
from vbugs_ray.spec import DEFAULT_SPEC

SEED = 11
CASES = 600

BASE_TEXT = DEFAULT_SPEC.read_text()
BASE = yaml.safe_load(BASE_TEXT)

HUGE = "x" * 20_000
VALUES = {  # replacement values by type: a value is swapped for one of another type
    "str": ["", "   ", "a", "tpu", "cuda:99", "{class}", "a {class} {nope}", HUGE, "línea\nnueva", "1e12"],
    "int": [0, -1, 1, 3, 2**31, 2**64, 2**70, 10**400],
    "float": [0.0, -0.5, 0.5, 1.5, 1e308, -1e308, float("nan"), float("inf"), 5e-324],
    "bool": [True, False],
    "list": [[], [None], [1, "a"], ["grass", "grass"], [[1]], [HUGE], list(range(300))],
    "dict": [{}, {"a": 1}, {"backend": 3}, {None: None}, {"where": {"class": "star"}, "keep": 2}],
    "none": [None],
    "other": [datetime.date(2024, 1, 1), b"\x00\xff", {1, 2}, {1: 2, 1.5: None, False: "x"}],
}
OPTIONAL_PATHS = [  # keys the default spec leaves out: set them too, so their rules are fuzzed
    ("images_per_cell",), ("filter",), ("filter", "min_class_similarity"), ("filter", "class_top_k"),
    ("filter", "class_prompt"), ("verify",), ("verify", "rounds"), ("verify", "vocabulary"),
    ("classifier", "dtype"), ("classifier", "device"), ("classifier", "num_gpus"), ("embedder", "options"),
    ("generator", "concurrency"), ("captioner", "dtype"), ("run", "ray_address"), ("run", "ray_num_cpus"),
    ("run", "fuse_scoring"), ("classifier", "options", "seed"), ("embedder", "options", "seed"),
    ("embedder", "options", "steps"), ("name",), ("output_dir",), ("search", "prune"), ("search", "n_bins"),
]
SPLICES = [b"\x00", b"\xff\xfe", b"\xe9", b"\t", b"{", b"[", b"]", b":", b": :", b"&a", b"*a", b"*", b"!", b"%",
           b"@", b"`", b"|", b">", b"---\n", b"\n- ", b"!!python/object:os.system ", b"!!binary ", b"!foo ",
           b"<<: ", b"? ", b"\r", b"\x1b[31m", b"\xef\xbb\xbf", b"'", b'"', b"#", b"\\", "é".encode(),
           b"9" * 5000, b"2024-13-45", b".nan", b"0x", b"~"]


def _paths(node, prefix=()):
    """Every path (tuple of keys and list indices) to a value in ``node``."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield prefix + (key,)
        yield from _paths(value, prefix + (key,))


def _set(spec: dict, path: tuple, value) -> None:
    """``spec`` at ``path`` = ``value``, making the mappings (or lists) on the way that it lacks."""
    node = spec
    for key, next_key in zip(path[:-1], path[1:]):
        want = list if isinstance(next_key, int) else dict
        child = node.get(key) if isinstance(node, dict) else node[key]
        if not isinstance(child, want):
            child = node[key] = [None] * (next_key + 1) if want is list else {}
        node = child
    node[path[-1]] = value


def _delete(spec: dict, path: tuple) -> None:
    node = spec
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]


def _type_of(value) -> str:
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("str", str), ("list", list), ("dict", dict)):
        if isinstance(value, kind):
            return name
    return "none" if value is None else "other"


def _mutate_data(rng: random.Random, spec: dict) -> str:
    """One change to the spec mapping; returns what it did."""
    paths = list(_paths(spec))
    action = rng.choice(["delete", "swap", "swap", "extreme", "optional"])
    if action == "delete" and paths:
        path = rng.choice(paths)
        _delete(spec, path)
        return f"delete {path}"
    if action == "optional":
        path = rng.choice(OPTIONAL_PATHS)
        kind = rng.choice(list(VALUES))
    else:
        path = rng.choice(paths) if paths else ("seed",)
        kinds = [k for k in VALUES if k != _type_of(_get(spec, path))]
        kind = rng.choice(["int", "float"] if action == "extreme" else kinds)
    value = copy.deepcopy(rng.choice(VALUES[kind]))
    _set(spec, path, value)
    return f"set {path} = {str(value)[:60]}"


def _get(spec, path):
    node = spec
    for key in path:
        node = node[key]
    return node


def _splice(rng: random.Random, text: bytes) -> tuple[bytes, str]:
    """Garbage in the YAML text: bytes spliced in, a span cut out, or the whole text re-encoded."""
    action = rng.choice(["insert", "insert", "insert", "cut", "random", "encode"])
    at = rng.randrange(len(text) + 1)
    if action == "insert":
        piece = rng.choice(SPLICES)
        return text[:at] + piece + text[at:], f"insert {piece[:20]!r} at byte {at}"
    if action == "cut":
        end = min(len(text), at + rng.randrange(1, 40))
        return text[:at] + text[end:], f"cut bytes {at}:{end}"
    if action == "random":
        piece = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12)))
        return text[:at] + piece + text[at:], f"insert {piece!r} at byte {at}"
    encoding = rng.choice(["utf-16", "utf-16-be", "latin-1", "utf-32"])
    return text.decode().replace("toyworld-demo", "tøyworld").encode(encoding, "replace"), f"encode as {encoding}"


def _dump(spec: dict) -> bytes:
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True).encode()


def fuzz_cases(n: int = CASES, seed: int = SEED) -> list[tuple[str, bytes]]:
    """``n`` (what was done, spec file bytes) pairs, the same for the same seed."""
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        spec, done = copy.deepcopy(BASE), []
        for _ in range(rng.choice([1, 1, 2, 3])):
            done.append(_mutate_data(rng, spec))
        text = _dump(spec)
        if rng.random() < 0.35:  # garbage in the text, of the mutated spec or of the file as written
            if rng.random() < 0.5:
                text, done = BASE_TEXT.encode(), ["the default spec file"]
            text, how = _splice(rng, text)
            done.append(how)
        cases.append(("; ".join(done), text))
    return cases


def _check(path) -> str | None:
    """None if the spec passes; else its one-line error. Any other exception propagates."""
    try:
        validate(str(path))
    except USER_ERRORS as exc:
        return str(exc)
    return None


def test_mutated_specs_pass_or_stop_with_one_short_line(tmp_path):
    path = tmp_path / "spec.yaml"
    outcomes = {"passed": 0, "refused": 0}
    for i, (done, text) in enumerate(fuzz_cases()):
        path.write_bytes(text)
        try:
            message = _check(path)
        except Exception as exc:  # noqa: BLE001 - the point: anything but a user error is a bug
            shown = text[:1500].decode("utf-8", "replace")
            pytest.fail(f"case {i} ({done}) raised {type(exc).__name__}: {str(exc)[:300]}\n--- spec ---\n{shown}")
        if message is None:
            outcomes["passed"] += 1
            continue
        outcomes["refused"] += 1
        assert "\n" not in message and len(message) < 300, f"case {i} ({done}): {message[:1000]!r}"
    # the mutations are not all caught by one check, nor all harmless
    assert outcomes["passed"] >= 10 and outcomes["refused"] >= CASES // 2, outcomes


def _worst() -> dict[str, bytes]:
    """Five of the worst inputs the fuzzer makes, for the command line."""
    base = BASE_TEXT.encode()
    huge_key = copy.deepcopy(BASE)
    huge_key["search"][HUGE + "\n"] = 1
    huge_budget = copy.deepcopy(BASE)
    huge_budget["budget"] = 2**70
    return {
        "nul_byte": base.replace(b"seed: 0", b"seed: 0\x00"),
        "utf16": BASE_TEXT.replace("toyworld-demo", "tøyworld").encode("utf-16"),
        "python_tag": base.replace(b"seed: 0", b"seed: !!python/object/apply:os.system [echo hi]"),
        "huge_key_with_newline": _dump(huge_key),
        "budget_2_70": _dump(huge_budget),
    }


@pytest.mark.cli
@pytest.mark.parametrize("case", sorted(_worst()))
def test_the_worst_cases_are_one_line_from_the_command(case, tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes(_worst()[case])
    done = subprocess.run([sys.executable, "-m", "vbugs_ray.cli", "validate", str(path)], capture_output=True,
                          text=True, errors="replace")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vbugs: error: spec field '") and len(lines[0]) < 320, lines
