"""The JSON text the project writes and prints (report.json, ``--out`` files, the CLI's output):
strict JSON that any parser reads. JSON has no NaN or infinity (Python's ``json`` writes bare
``NaN``, which strict parsers reject), so a number that is not finite, such as the mean loss of
a slice whose losses are missing, is written as null."""

from __future__ import annotations

import json
import math
from typing import Any, Mapping


def to_json(data: Any, indent: int | None = 2) -> str:
    """``data`` as strict JSON text: non-finite floats as null, numpy values as plain ones, any
    other object as its ``str``."""
    return json.dumps(plain(data), indent=indent, default=str, allow_nan=False)


def plain(value: Any) -> Any:
    """``value`` with every non-finite float (nested in mappings and lists too) as None and
    numpy scalars and arrays (anything with ``tolist``) as Python numbers and lists."""
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {plain(key) if hasattr(key, "tolist") else key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if hasattr(value, "tolist"):
        return plain(value.tolist())
    return value
