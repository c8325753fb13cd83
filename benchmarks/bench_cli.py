"""CLI start-up: wall time of `vbugs` commands as whole processes, beside the bare interpreter's
start, and which heavy modules each imports (Python's -X importtime). JSON out.

- `vbugs --help` (issue target: < 0.5 s), `vbugs validate` (the default spec: YAML, the grid),
  `vbugs slices --table` on a 100k-row Parquet table (one shard: no Ray);
- baseline: `python -c pass` (the floor any command pays) on the same interpreter.
Each is run ``--repeat`` times; the median is reported, with its ratio to the baseline.
Usage: python benchmarks/bench_cli.py [--repeat 7] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HEAVY = ("torch", "ray", "scipy", "sklearn", "open_clip", "diffusers", "transformers", "timm")


def _seconds(args: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(args, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _heavy_imports(args: list[str]) -> list[str]:
    """Top-level heavy packages the command imports (from -X importtime's lines; a console
    script is run by this interpreter)."""
    head = [sys.executable, "-X", "importtime"] + ([] if args[0] == sys.executable else [args[0]])
    err = subprocess.run([*head, *args[1:]], capture_output=True, text=True).stderr
    names = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in err.splitlines() if line.startswith("import time:")}
    return sorted(names & set(HEAVY))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    py = sys.executable
    vbugs = str(Path(py).parent / "vbugs")  # the console script a user runs
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        n = 100_000
        table = pa.table({"a": rng.integers(0, 4, n).astype(str), "b": rng.integers(0, 3, n).astype(str),
                          "error": rng.random(n) < 0.1})
        pq.write_table(table, Path(tmp) / "t.parquet")
        commands = {
            "python -c pass (baseline)": [py, "-c", "pass"],
            "vbugs --help": [vbugs, "--help"],
            "vbugs validate": [vbugs, "validate"],
            "vbugs slices --table (100k rows)": [vbugs, "slices", "--table", str(Path(tmp) / "t.parquet"),
                                                 "--out", str(Path(tmp) / "out.json")],
        }
        seconds = {name: _seconds(cmd, args.repeat) for name, cmd in commands.items()}
        heavy = {name: _heavy_imports(cmd) for name, cmd in commands.items()}
    base = seconds["python -c pass (baseline)"]
    result = {"benchmark": "cli", "repeat": args.repeat, "python": sys.version.split()[0],
              "commands": {name: {"median_s": round(s, 3), "over_baseline": round(s / base, 2), "heavy_imports": heavy[name]}
                           for name, s in seconds.items()},
              "help_under_0_5_s": seconds["vbugs --help"] < 0.5}
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
