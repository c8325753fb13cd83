"""The phrases an audit can describe a failure with: the spec's class names and axis phrases,
the words the generator itself understands (a backend's optional ``vocabulary(options, spec)``
classmethod returning groups of mutually exclusive phrases, e.g. ``{"size": ["small", "large"]}``:
for the toy world, every renderer property the spec's axes leave open), and the user's
``verify.vocabulary``. Captioners rank them; the diagnosis ensemble scores them; a phrase
that is an axis value's words becomes a predicate of a hypothesis."""

from __future__ import annotations

from vbugs_ray.roles import registry
from vbugs_ray.spec import AuditSpec


def generator_vocabulary(spec: AuditSpec) -> dict[str, list[str]]:
    """The generator's own words, by group (one phrase of a group at most describes an image)."""
    cls = registry.backend_class("generator", spec.generator.backend)
    if not hasattr(cls, "vocabulary"):
        return {}
    return {group: list(phrases) for group, phrases in
            cls.vocabulary(registry.options_of("generator", spec.generator), spec).items()}


def candidate_phrases(spec: AuditSpec, with_classes: bool = True) -> list[str]:
    """Every describing phrase, deduplicated, in a fixed order (classes, axes, generator, user)."""
    phrases = list(spec.classes) if with_classes else []
    for axis in spec.axes:
        phrases.extend(axis.phrases)
    for group in generator_vocabulary(spec).values():
        phrases.extend(group)
    if spec.verify is not None:
        phrases.extend(spec.verify.vocabulary)
    return list(dict.fromkeys(phrases))


def axis_of_phrase(spec: AuditSpec) -> dict[str, tuple[str, str]]:
    """phrase -> (axis, value) for the words that name an axis value in the spec's prompt."""
    return {phrase: (axis.name, value) for axis in spec.axes for value, phrase in zip(axis.values, axis.phrases)}


def exclusive_group(spec: AuditSpec) -> dict[str, str]:
    """phrase -> the group of mutually exclusive phrases it belongs to (an axis, or a group of the
    generator's vocabulary); the user's phrases belong to no group."""
    groups = {phrase: "axis:" + axis.name for axis in spec.axes for phrase in axis.phrases}
    for group, phrases in generator_vocabulary(spec).items():
        for phrase in phrases:
            groups.setdefault(phrase, "generator:" + group)
    return groups
