"""The baseline of bench_discover.py: Domino's slicer (Eyuboglu et al., 2022; pip `domino==0.1.5`),
run on the same rows in its own virtual environment (`make bench-discover` builds it). Domino
pins scikit-learn 0.24, which has no wheels for Python 3.11; with scikit-learn 1.1 it runs once
the private `_check_X` it imports (removed in 1.0) is put back, below, as 0.24 wrote it. Reads the .npz that bench_discover.py writes; prints JSON with the wall time
of the fit (and of the whole process), the rows of each slice (Domino's `predict`: each row to its
most likely slice) and each slice's TOP_K most likely rows.
Usage: python domino_baseline.py ROWS.npz TOP_K [N_SLICES]

Domino's package imports meerkat (a DataFrame library) at the top of its modules for its
DataPanel input, and torch.nn for a type hint; we pass numpy arrays, so stand-in modules are
installed before the import instead of meerkat's dependency tree (which no longer installs on
Python 3.11) and torch.
"""

import json
import sys
import time
import types

START = time.perf_counter()
mk = types.ModuleType("meerkat")
mk.DataPanel = dict
sys.modules["meerkat"] = mk
# torch.nn appears in the slicer base class's type hints only
torch, nn = types.ModuleType("torch"), types.ModuleType("torch.nn")
nn.Module, torch.nn = object, nn
sys.modules.update({"torch": torch, "torch.nn": nn})
# the package's __init__ also imports its embedding and describing code (torch, CLIP); the slicer
# needs none of it, so the package is registered bare and only its slicer module is loaded
import importlib.util  # noqa: E402

package = types.ModuleType("domino")
package.__path__ = list(importlib.util.find_spec("domino").submodule_search_locations)
sys.modules["domino"] = package

import numpy as np  # noqa: E402
import sklearn.mixture._base as mixture_base  # noqa: E402
from sklearn.utils import check_array, check_random_state  # noqa: E402


def _check_X(X, n_components=None, n_features=None, ensure_min_samples=1):
    """scikit-learn 0.24's private input check, which Domino imports (removed in 1.0)."""
    X = check_array(X, dtype=[np.float64, np.float32], ensure_min_samples=ensure_min_samples)
    if n_components is not None and X.shape[0] < n_components:
        raise ValueError(f"Expected n_samples >= n_components but got n_components = {n_components}, "
                         f"n_samples = {X.shape[0]}")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"Expected the input data X have {n_features} features, but got {X.shape[1]} features")
    return X


mixture_base._check_X = _check_X
mixture_base.check_random_state = check_random_state

from domino._slice.domino import DominoSlicer  # noqa: E402


def main() -> None:
    data = np.load(sys.argv[1])
    top_k = int(sys.argv[2])
    n_slices = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    classes = data["classes"]
    names = np.unique(classes)
    targets = np.searchsorted(names, classes)
    preds = np.searchsorted(names, data["predictions"])
    pred_probs = np.eye(len(names))[preds]
    t = time.perf_counter()
    # Domino's default initialisation ("confusion": each component starts in one cell of the
    # confusion matrix) needs at least one component per cell
    slicer = DominoSlicer(n_slices=n_slices, n_mixture_components=max(25, len(names) ** 2), random_state=0)
    slicer.fit(embeddings=data["embeddings"], targets=targets, pred_probs=pred_probs)
    probs = slicer.predict_proba(embeddings=data["embeddings"], targets=targets, pred_probs=pred_probs)
    fit_s = time.perf_counter() - t
    # Domino's predict: each row to its most likely slice; and each slice's top_k rows by probability
    slices = [np.flatnonzero(probs.argmax(axis=1) == j).tolist() for j in range(probs.shape[1])]
    top = [np.argsort(-probs[:, j], kind="stable")[:top_k].tolist() for j in range(probs.shape[1])]
    print(json.dumps({"fit_seconds": fit_s, "process_seconds": time.perf_counter() - START, "slices": slices,
                      "top_rows": top}))


if __name__ == "__main__":
    main()
