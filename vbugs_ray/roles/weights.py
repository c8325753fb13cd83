"""Reading weights files and importing user callables, with one-line errors naming the field.

``torch.load`` runs with ``weights_only=True``: a checkpoint is data, never code to execute.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

from vbugs_ray.errors import SpecError, quote


def read_tensors(path: str, field: str, what: str = "weights file", hint: str = "") -> Any:
    """The contents of a .safetensors file, or of a torch file read with ``weights_only=True``."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise SpecError(field, f"no {what} at {file}{hint}")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        import torch

        return torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:  # any reader failure is the same user problem: an unreadable file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(field, f"cannot read {what} {file} ({reason[:160]}); "
                        f"expected tensors saved with torch.save or safetensors") from None


def load_state_dict(path: str, field: str) -> dict:
    """A state dict from .safetensors, or a torch file (.pt/.pth/.bin; nested under
    'state_dict' or 'model' as training scripts save them)."""
    state = read_tensors(path, field)
    file = Path(path).expanduser()
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise SpecError(field, f"{file} holds a {type(state).__name__}, not a state dict")
    return state


def load_into(model: Any, path: str, field: str) -> None:
    """Load a weights file into ``model``, strictly: a mismatch is an error naming the keys."""
    state = load_state_dict(path, field)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise SpecError(field, f"{path} does not fit the model: {' '.join(lines[1:3])[:200]}") from None


def check_pretrained_source(value: Any, field: str, example: str, marker: str, kind: str) -> None:
    """A hub id, or a local folder written by ``save_pretrained`` (it holds ``marker``). Paths are
    told apart by their start (., /, ~); a hub id is only checked when it is loaded."""
    if not isinstance(value, str) or not value:
        raise SpecError(field, f"is required: a hub id ({example}) or a local {kind} folder")
    if value.startswith((".", "/", "~")) and not (Path(value).expanduser() / marker).is_file():
        raise SpecError(field, f"{value} is not a {kind} folder (no {marker})")


def import_callable(target: Any, field: str) -> Callable:
    """'package.module:attribute' -> the object."""
    if not isinstance(target, str) or ":" not in target:
        raise SpecError(field, f"expected 'package.module:callable'; got {quote(target)}")
    module, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise SpecError(field, f"cannot import {target} ({exc})") from None
    if not callable(obj):
        raise SpecError(field, f"{target} is not callable")
    return obj
