"""Declared options: a dataclass lists each option once, with its default and its rule, and
``parse_options`` turns a spec mapping into an instance or a one-line ``SpecError``.

Spec sections (``search``, ``filter``, ``run``, a role) and every backend's ``options`` are
declared this way, so a default is written in one place and the same checks (an integer >= 1, a
fraction, one of a list...) are never written twice::

    @dataclass(frozen=True)
    class Options:
        model: str = option(REQUIRED, kind=str, doc="a hub id or a local folder")
        steps: int = option(25, kind=int, low=1)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from vbugs_ray.errors import SpecError, quote


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
INT_LIMIT = 2**63  # an integer option past a 64-bit integer reaches no array or tensor (2**70 epochs...)
SEED_MAX = 2**32 - 1  # a seed reaches numpy and scikit-learn, whose seeds are 32-bit: 0 to 4294967295
_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a non-empty string",
               dict: "a mapping", list: "a list"}


@dataclass(frozen=True)
class Rule:
    """How one option is checked: its type, bounds, allowed values, or a custom parser."""

    kind: type | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    multiple: int | None = None
    choices: tuple | None = None
    parse: Callable[[Any, str], Any] | None = None  # (value, field) -> value, raising SpecError
    doc: str = ""

    def check(self, value: Any, where: str) -> Any:
        if self.parse is not None:
            return self.parse(value, where)
        if self.choices is not None:
            if value not in self.choices:
                raise SpecError(where, f"unknown value {quote(value)}; allowed: {', '.join(map(str, self.choices))}")
            return value
        if self.kind is None:
            return value
        if not _is_kind(value, self.kind):
            extra = f" ({self.doc})" if self.doc else ""
            hint = _as_number(value, self.kind)
            raise SpecError(where, f"expected {_KIND_NAMES[self.kind]}{extra}; got {quote(value)}{hint}")
        if self.kind in (int, float):
            try:
                value = self.kind(value)
            except OverflowError:  # an integer past the largest float
                raise SpecError(where, f"must be a finite number; got {quote(value)}") from None
            check_finite(value, where)
            if self.low is not None and (value <= self.low if self.low_open else value < self.low):
                sign = ">" if self.low_open else ">="
                raise SpecError(where, f"must be {sign} {_number(self.low)}; got {quote(value)}")
            if self.high is not None and value > self.high:
                raise SpecError(where, f"must be <= {_number(self.high)}; got {quote(value)}")
            if self.multiple and value % self.multiple:
                raise SpecError(where, f"must be a multiple of {self.multiple}; got {quote(value)}")
            if self.kind is int and self.high is None and not -INT_LIMIT <= value < INT_LIMIT:
                raise SpecError(where, f"must fit in 64 bits (at most {INT_LIMIT - 1}); got {quote(value)}")
        return value


def _as_number(value: Any, kind: type) -> str:
    """A hint when YAML read a number as text: YAML 1.1 takes ``1e12`` and ``5e-2`` (no point) for strings."""
    if kind not in (int, float) or not isinstance(value, str) or len(value) > 30:
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    if not math.isfinite(number):
        return ""
    written = str(int(number)) if kind is int and number.is_integer() else repr(number)
    return f" (YAML reads {value} as text; write {written})"


def _number(bound: float) -> str:
    """A bound as a spec would write it: 4294967295, not 4.29497e+09; 0.5 as 0.5."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def _is_kind(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str) and bool(value.strip())
    return isinstance(value, kind)


def option(default: Any = REQUIRED, **rule: Any) -> Any:
    """A dataclass field with its rule (see ``Rule``). ``None`` as default: optional, unset."""
    if isinstance(default, (dict, list)):
        factory = (lambda d=default: type(d)(d))
        return dataclasses.field(default_factory=factory, metadata={"rule": Rule(**rule)})
    return dataclasses.field(default=default, metadata={"rule": Rule(**rule)})


def check_value(value: Any, where: str, **rule: Any) -> Any:
    """One value against a rule, outside any declared dataclass (top-level spec fields)."""
    return Rule(**rule).check(value, where)


def check_seed(value: Any, where: str) -> int:
    """A seed: an integer from 0 to SEED_MAX (a seed of the spec, or of a backend's training)."""
    if not (_is_kind(value, int) and 0 <= value <= SEED_MAX):
        raise SpecError(where, f"must be an integer from 0 to {SEED_MAX}; got {quote(value)}{_as_number(value, int)}")
    return value


def check_finite(value: Any, where: str) -> None:
    """A float must be a number: NaN passes every bound check (all comparisons are false) and
    infinity most, so either would quietly flag nothing or everything."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(where, f"must be a finite number; got {quote(value)}")


def check_all_finite(data: Any, where: str = "") -> None:
    """Every float anywhere in a spec mapping (backend options, axis values...) is finite; the
    first that is not raises SpecError naming its path (``search.alpha``, ``axes.size[2]``)."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            check_all_finite(value, _join(where, str(key)))
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            check_all_finite(value, f"{where}[{i}]")
    else:
        check_finite(data, where or "<top>")


def check_field(cls: type, name: str, value: Any, where: str) -> Any:
    """``value`` checked by the rule of the declared option ``name`` of ``cls`` alone (a
    command-line override of one setting)."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return field.metadata.get("rule", Rule()).check(value, where)


def names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def parse_options(cls: type, raw: Any, where: str, noun: str = "key") -> Any:
    """An instance of the declared dataclass ``cls`` from a spec mapping (None: all defaults).
    Unknown keys, missing required ones and values breaking a rule raise SpecError naming
    ``where.key``."""
    if raw is None:
        raw = {}
    allowed = names(cls)
    if not isinstance(raw, Mapping):
        raise SpecError(where or "<top>", f"expected a mapping with keys {', '.join(allowed)}; got {type(raw).__name__}")
    for key in raw:
        if key not in allowed:
            raise SpecError(_join(where, str(key)), f"unknown {noun}; allowed: {', '.join(allowed)}")
    values = {}
    for f in dataclasses.fields(cls):
        rule: Rule = f.metadata.get("rule", Rule())
        field_path = _join(where, f.name)
        if f.name in raw and raw[f.name] is not None:
            values[f.name] = rule.check(raw[f.name], field_path)
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else REQUIRED)
        if default is REQUIRED:
            raise SpecError(field_path, f"is required{': ' + rule.doc if rule.doc else ''}")
        values[f.name] = default
    return cls(**values)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
