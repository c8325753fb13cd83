"""AuditSpec: YAML in, validated dataclasses out.

Every mistake raises ``SpecError`` whose message names the field (``classifier.backend``,
``axes.lighting``...) and says what is allowed, so the CLI can print it on one line.

Parsing checks the spec's own structure only; it imports no backend. Whether the named
backends exist and accept their options is ``roles.registry.validate_backends(spec)``, a separate
step that the audit and ``vbugs validate`` run and that re-running the statistics of a finished
run (``vbugs slices RUN_DIR``) does not need.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import math
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from vbugs_ray.errors import SpecError, quote
from vbugs_ray.fields import REQUIRED, check_all_finite, check_seed, check_value, option, parse_options
from vbugs_ray.slices.settings import SearchSettings
from vbugs_ray.verify.settings import VerifySettings

ROLES = ("generator", "classifier", "embedder", "captioner")
PIPELINE_ROLES = ("generator", "classifier", "embedder")  # the roles that run as actor pools
SAMPLING_RULES = ("balanced", "random")
EXECUTORS = ("ray", "local")
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
               "bfloat16": "bfloat16", "bf16": "bfloat16"}
MAX_ROWS = 100_000_000
"""The most rows (images) one audit's grid may hold, and so the largest ``budget``: the grid is
built in memory before any image is made, at about 300 bytes a row at its peak (some 30 GB at the limit)."""
MAX_YAML_VALUES = 1_000_000  # values a spec file may stand for once its YAML aliases are expanded


def _dtype(value: Any, where: str) -> str:
    if not isinstance(value, str) or value not in DTYPE_NAMES:
        raise SpecError(where, f"expected float32, float16 or bfloat16 (fp32, fp16, bf16); got {quote(value)}")
    return DTYPE_NAMES[value]


AUTO = "auto"


def _batch_size(value: Any, where: str) -> int | str:
    """Rows per model call: an integer >= 1, or ``auto``: the largest that pays, measured on
    the role's own device before the run (``batchprobe``)."""
    if value == AUTO:
        return AUTO
    return check_value(value, where, kind=int, low=1)


def _device(value: Any, where: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
        raise SpecError(where, f"expected auto, cpu, cuda or cuda:N; got {quote(value)}")
    return value


def _string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise SpecError(where, "expected a non-empty list of strings")
    out = [check_value(v, f"{where}[{i}]", kind=str) for i, v in enumerate(value)]
    dupes = sorted({v for v in out if out.count(v) > 1})
    if dupes:
        raise SpecError(where, f"duplicate values {dupes}")
    return out


@dataclass(frozen=True)
class Axis:
    """One shift axis: its values and the words each value puts in the prompt."""

    name: str
    values: tuple[str, ...]
    phrases: tuple[str, ...]


@dataclass(frozen=True)
class RoleSpec:
    """Which backend plays a role, its options (checked by the backend, see roles.registry), and
    the resources its actors ask for."""

    backend: str = option(REQUIRED, kind=str, doc="the name of a backend")
    options: dict = option({}, kind=dict, doc="backend options")
    batch_size: int | str = option(256, parse=_batch_size)  # "auto": probed (batchprobe); resolved before use
    concurrency: int = option(1, kind=int, low=1)
    # an autoscaling actor pool: `concurrency` actors to start, up to this many while work waits
    max_concurrency: int | None = option(None, kind=int, low=1)
    num_cpus: float = option(0.25, kind=float, low=0, low_open=True)
    num_gpus: float = option(0.0, kind=float, low=0)
    # pinning to a node type: Ray's accelerator type (A100, H100, L4...) and custom node resources
    accelerator_type: str | None = option(None, kind=str)
    resources: dict = option({}, kind=dict)
    device: str = option("auto", parse=_device)
    dtype: str = option("float32", parse=_dtype)


# run-store columns an axis may not be named after (its values would be read as theirs)
RESERVED_COLUMNS = ("class", "seed", "prompt", "row_id", "cell", "replicate", "label", "hypothesis", "arm", "image",
                    "source", "raw_label", "data_error",
                    "image_png", "embedding", "valid", "filter_reason", "failed", "pred_index", "pred_name",
                    "pred_label", "pred", "p_true", "loss", "error", "top5", "class_similarity", "shift_similarity")


def pinning(accelerator_type: str | None, resources: Mapping[str, float]) -> dict:
    """Ray remote arguments that pin actors to a node type (only those set)."""
    return {**({"accelerator_type": accelerator_type} if accelerator_type else {}),
            **({"resources": dict(resources)} if resources else {})}


def node_needs(num_cpus: float, num_gpus: float, accelerator_type: str | None,
               resources: Mapping[str, float]) -> dict[str, float]:
    """What one actor needs of a node, as Ray names node resources (an accelerator type is a
    resource ``accelerator_type:X`` of which a node has 1)."""
    return {"CPU": num_cpus, "GPU": num_gpus, **resources,
            **({f"accelerator_type:{accelerator_type}": 0.001} if accelerator_type else {})}


@dataclass(frozen=True)
class FilterSpec:
    """The CLIP filter (Dataset Interfaces): a generated image must look like its class (and its
    shift) to the embedder, or its row is kept but marked invalid, left out of slice statistics,
    and not classified. Each criterion is optional; similarities are cosines in the embedder's
    space."""

    class_prompt: str = option("a photo of a {class}", kind=str)
    shift_prompt: str = option("a photo {phrase}", kind=str)
    min_class_similarity: float | None = option(None, kind=float, low=-1, high=1)
    class_top_k: int | None = option(None, kind=int, low=1)
    min_shift_similarity: float | None = option(None, kind=float, low=-1, high=1)


@dataclass(frozen=True)
class RunSpec:
    """How the audit executes: Ray or in-process, shard size, local Ray resources."""

    executor: str = option("ray", choices=EXECUTORS)
    shard_rows: int = option(4096, kind=int, low=1)
    ray_address: str | None = option(None, kind=str)
    ray_num_cpus: int | None = option(None, kind=int, low=1)
    # how long to wait for ray_address (or RAY_ADDRESS) to answer; None: VBUGS_RAY_CONNECT_TIMEOUT_S, else 30
    ray_connect_timeout_s: float | None = option(None, kind=float, low=0, low_open=True, high=86_400)
    # embedder and classifier in one actor when they share a device (fewer actors, one transfer less)
    fuse_scoring: bool = option(True, kind=bool)
    # rows whose batch failed are marked and kept; more than this share of an execution's rows stops it
    max_failed_share: float = option(0.01, kind=float, low=0, high=1)
    # `vbugs submit`: the Ray job's runtime env (pip, env_vars, working_dir...); --runtime-env overrides keys
    runtime_env: dict | None = option(None, kind=dict)


@dataclass(frozen=True)
class AuditSpec:
    name: str
    classes: tuple[str, ...]
    class_phrases: tuple[str, ...]  # the words {class} becomes in a prompt (a learned token...)
    axes: tuple[Axis, ...]  # () while ``axes_auto``: the generator reads them from its data
    prompt: str
    images_per_cell: int | None
    budget: int | None
    sampling: str
    seed: int
    generator: RoleSpec
    classifier: RoleSpec
    embedder: RoleSpec
    captioner: RoleSpec | None
    filter: FilterSpec | None
    search: SearchSettings
    verify: VerifySettings | None  # None: the audit ends at flagged slices
    run: RunSpec
    output_dir: str
    axes_auto: bool = False  # `axes: auto`: a dataset's metadata columns, found by the generator (registry.resolve_axes)
    # the axes were found so (spec.json says it): one row per image, not a grid of class x axis values, so the
    # product of the axes' sizes, which many metadata columns make huge, is no grid size to check
    axes_from_data: bool = False

    TOP_FIELDS = ("name", "classes", "axes", "prompt", "images_per_cell", "budget", "sampling", "seed",
                  "generator", "classifier", "embedder", "captioner", "filter", "search", "verify", "run",
                  "output_dir", "axes_from_data")

    @property
    def axis_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.axes)

    def roles(self) -> dict[str, RoleSpec]:
        """The roles the spec fills, by name (the captioner only if it has one)."""
        return {role: getattr(self, role) for role in ROLES if getattr(self, role) is not None}

    def to_dict(self) -> dict:
        """Plain data, with axes as name -> {value: phrase}, suitable for JSON and hashing."""
        data = dataclasses.asdict(self)
        data["axes"] = "auto" if self.axes_auto else {a.name: dict(zip(a.values, a.phrases)) for a in self.axes}
        del data["axes_auto"]
        if not self.axes_from_data:
            del data["axes_from_data"]
        phrases = data.pop("class_phrases")
        if phrases != data["classes"]:
            data["classes"] = dict(zip(data["classes"], phrases))
        if data["verify"] is None:
            data["verify"] = False
        return json.loads(json.dumps(data))  # tuples -> lists: parse_spec(to_dict()) round-trips


AUTO_AXES = "auto"  # axes: auto: a dataset generator's metadata columns become the axes
AUTO_PROMPT = "a photo of a {class}"  # the prompt of `axes: auto` when none is given; the axes are appended


def _parse_axes(data: Any) -> tuple[Axis, ...]:
    """The axes; ``{}`` is none (a class-only audit: discovery and captions describe its failures)."""
    if not isinstance(data, Mapping):
        raise SpecError("axes", "expected a mapping axis -> list of values (or value -> prompt phrase), "
                                "{} for none, or auto (a dataset generator's metadata columns)")
    axes = []
    for name, values in data.items():
        where = f"axes.{name}"
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise SpecError(where, "axis names must be identifiers (letters, digits, _)")
        if name in RESERVED_COLUMNS:
            raise SpecError(where, f"'{name}' is reserved; rename the axis")
        if isinstance(values, Mapping):
            if not values:
                raise SpecError(where, "axis has no values; list at least one")
            vals = _string_list([str(v) for v in values], where)
            phrases = [check_value(p, f"{where}.{v}", kind=str) for v, p in values.items()]
        else:
            if not isinstance(values, list) or not values:
                raise SpecError(where, "axis has no values; list at least one")
            vals = _string_list([str(v) if isinstance(v, (int, float)) else v for v in values], where)
            phrases = vals
        axes.append(Axis(name, tuple(vals), tuple(phrases)))
    return tuple(axes)


def _parse_classes(data: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A list of class names, or a mapping name -> the words the prompt uses for it (for learned
    tokens: ``tench: "<tench>"``); names are what the classifier's labels and the report use."""
    if isinstance(data, Mapping):
        if not data:
            raise SpecError("classes", "expected a non-empty list of class names (or name -> prompt words)")
        names = _string_list([str(k) for k in data], "classes")
        return tuple(names), tuple(check_value(v, f"classes.{k}", kind=str) for k, v in data.items())
    names = tuple(_string_list(data, "classes"))
    return names, names


def _parse_role(role: str, data: Any, run: RunSpec) -> RoleSpec:
    if isinstance(data, str):
        data = {"backend": data}
    spec = parse_options(RoleSpec, data, role)
    if spec.batch_size == AUTO and role == "captioner":
        raise SpecError(f"{role}.batch_size", "auto is for the generator, embedder and classifier; give a number")
    if run.executor == "ray" and role != "captioner" and spec.device.startswith("cuda") and spec.num_gpus == 0:
        raise SpecError(f"{role}.num_gpus", f"device {spec.device} needs num_gpus > 0 (fractions allowed) "
                        f"so that Ray places the actor on a GPU; or set device: auto")
    if spec.max_concurrency is not None and spec.max_concurrency < spec.concurrency:
        raise SpecError(f"{role}.max_concurrency", f"must be >= concurrency ({spec.concurrency}); got "
                        f"{spec.max_concurrency}")
    for name, amount in spec.resources.items():
        if not isinstance(name, str) or not name or name in ("CPU", "GPU", "memory", "object_store_memory"):
            raise SpecError(f"{role}.resources", f"{quote(name)} is not a custom resource name; CPUs and GPUs are "
                            "num_cpus and num_gpus")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not amount > 0:
            raise SpecError(f"{role}.resources.{name}", f"must be a number > 0 (per actor); got {quote(amount)}")
    return spec


def _parse_filter(data: Any, n_classes: int) -> FilterSpec | None:
    if data is None:
        return None
    spec = parse_options(FilterSpec, data, "filter")
    if "{class}" not in spec.class_prompt:
        raise SpecError("filter.class_prompt", f"must contain {{class}}; got {quote(spec.class_prompt)}")
    if "{phrase}" not in spec.shift_prompt:
        raise SpecError("filter.shift_prompt",
                        f"must contain {{phrase}} (an axis value's words); got {quote(spec.shift_prompt)}")
    if spec.class_top_k is not None and spec.class_top_k > n_classes:
        raise SpecError("filter.class_top_k", f"must be <= {n_classes} (the number of classes); got {spec.class_top_k}")
    if spec.class_top_k is None and spec.min_class_similarity is None and spec.min_shift_similarity is None:
        raise SpecError("filter", "sets no criterion; give min_class_similarity, class_top_k or min_shift_similarity")
    return spec


def _check_prompt(template: str, classes: tuple[str, ...], axes: tuple[Axis, ...], auto: bool = False) -> None:
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise SpecError("prompt", f"not a valid template ({exc}); use {{class}} and {{axis}} placeholders")
    allowed = {"class"} | {a.name for a in axes}
    unknown = sorted(names - allowed)
    if unknown:
        raise SpecError("prompt", f"placeholder {{{unknown[0]}}} is neither 'class' nor an axis; allowed: {sorted(allowed)}")
    missing = [n for n in ["class", *[a.name for a in axes]] if n not in names]
    if auto and names - {"class"}:
        raise SpecError("prompt", "with axes: auto, the prompt names {class} only; each axis found is appended")
    if missing:
        raise SpecError("prompt", f"template does not mention {{{missing[0]}}}; every axis and the class must be in the prompt")
    try:  # a format spec or conversion ({class:d}, {class!x}) fails only when the grid is built
        template.format(**{name: "words" for name in allowed})
    except ValueError as exc:
        raise SpecError("prompt", f"not a valid template ({exc}); write placeholders as {{class}} or {{axis}}, "
                                  f"with no format spec or conversion")


def _check_grid_size(classes: tuple[str, ...], axes: tuple[Axis, ...], per_cell: int | None) -> None:
    """The grid fits in memory: at most MAX_ROWS cells, and at most MAX_ROWS rows in all (the
    budget's own bound is checked with its type)."""
    cells = len(classes) * math.prod(len(a.values) for a in axes)
    if cells > MAX_ROWS:
        raise SpecError("axes", f"the classes and axes make {cells} cells; at most {MAX_ROWS} (the most rows a grid "
                                f"holds): use fewer axes or values")
    if per_cell is not None and per_cell * cells > MAX_ROWS:
        raise SpecError("images_per_cell", f"{per_cell} images in each of {cells} cells make {per_cell * cells} rows; "
                                           f"at most {MAX_ROWS} (the most rows a grid holds)")


def parse_spec(data: Any, source: str = "<spec>") -> AuditSpec:
    """Validate a spec mapping (as loaded from YAML) into an AuditSpec. Backends are not
    looked at: see ``roles.registry.validate_backends``."""
    if data is None:
        raise SpecError("<top>", "the spec is empty; give at least classes, axes, prompt, generator, classifier and "
                                 "embedder (see vbugs_ray/specs/toyworld.yaml)")
    if not isinstance(data, Mapping):
        raise SpecError("<top>", f"expected a mapping with keys {', '.join(AuditSpec.TOP_FIELDS)}; got {type(data).__name__}")
    for key in data:
        if key not in AuditSpec.TOP_FIELDS:
            raise SpecError(str(key), f"unknown key; allowed: {', '.join(AuditSpec.TOP_FIELDS)}")
    check_all_finite(data)
    auto = data.get("axes") == AUTO_AXES
    for key in ("classes", "axes", *(() if auto else ("prompt",))):
        if data.get(key) is None:
            raise SpecError(key, "is required")
    classes, class_phrases = _parse_classes(data["classes"])
    axes = () if auto else _parse_axes(data["axes"])
    prompt = check_value(data.get("prompt", AUTO_PROMPT), "prompt", kind=str)
    _check_prompt(prompt, classes, axes, auto)

    per_cell, budget = data.get("images_per_cell"), data.get("budget")
    if per_cell is None and budget is None:
        per_cell = 10
    if per_cell is not None and budget is not None:
        raise SpecError("budget", "give either images_per_cell or budget, not both")
    if per_cell is not None:
        per_cell = check_value(per_cell, "images_per_cell", kind=int, low=0, low_open=True, high=MAX_ROWS)
    if budget is not None:
        budget = check_value(budget, "budget", kind=int, low=0, low_open=True, high=MAX_ROWS)
    from_data = check_value(data.get("axes_from_data", False), "axes_from_data", kind=bool)
    if not from_data:
        _check_grid_size(classes, axes, per_cell)
    sampling = check_value(data.get("sampling", "balanced"), "sampling", choices=SAMPLING_RULES)

    run = parse_options(RunSpec, data.get("run"), "run")
    roles = {}
    for role in ROLES:
        value = data.get(role)
        if value is None:
            if role == "captioner":
                roles[role] = None
                continue
            raise SpecError(role, "is required: name a backend (see `vbugs validate` and the README's backend table)")
        roles[role] = _parse_role(role, value, run)

    return AuditSpec(
        name=check_value(data.get("name", Path(source).stem if source != "<spec>" else "audit"), "name", kind=str),
        classes=classes,
        class_phrases=class_phrases,
        axes=axes,
        prompt=prompt,
        images_per_cell=per_cell,
        budget=budget,
        sampling=sampling,
        seed=check_seed(data.get("seed", 0), "seed"),
        filter=_parse_filter(data.get("filter"), len(classes)),
        search=SearchSettings.parse(data.get("search")),
        verify=VerifySettings.parse(data.get("verify")),
        run=run,
        output_dir=check_value(data.get("output_dir", "runs/audit"), "output_dir", kind=str),
        axes_auto=auto,
        axes_from_data=from_data,
        **roles,
    )


def load_spec(path: str | Path) -> AuditSpec:
    """Read and validate a YAML spec file (its structure; backends: roles.registry)."""
    return parse_spec(load_spec_data(path), source=str(path))


def load_spec_data(path: str | Path) -> Any:
    """A YAML file's data, read with the checks every spec file gets (encoding, duplicate keys,
    unsafe tags, depth), or one SpecError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError("<file>", f"no spec file at {path}")
    text = _spec_text(path)
    try:
        data = _read_yaml(text)
    except yaml.YAMLError as exc:
        raise SpecError("<file>", f"{path} is not valid YAML{_yaml_problem(exc, text)}") from None
    except RecursionError:
        raise SpecError("<file>", f"{path} nests lists or mappings too deeply to read") from None
    if data is None:
        raise SpecError("<file>", f"the spec is empty: {path} holds no YAML, only blank lines or comments")
    return data


def _spec_text(path: Path) -> str:
    """The file's text, or a SpecError naming the file if it is not UTF-8 (a UTF-8 BOM is dropped)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError("<file>", f"cannot read {path} ({exc.strerror})") from None
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise SpecError("<file>", f"{path} is UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SpecError("<file>", f"{path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}, "
                                  f"line {line}); save it as UTF-8") from None


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """Where and what PyYAML found, for the end of an error line: " at line 3: found ..."."""
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow (a NUL, a control code)
        line = text.count("\n", 0, exc.position) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return f" at line {line}: it holds the control character 0x{code:02x}; remove it"
    mark = getattr(exc, "problem_mark", None)
    problem, context = getattr(exc, "problem", None), getattr(exc, "context", None)
    if problem and context and problem.startswith("but "):  # "expected a single document ..., but found another"
        problem = f"{context}, {problem}"
    return (f" at line {mark.line + 1}" if mark else "") + (f": {problem}" if problem else "")


def _read_yaml(text: str) -> Any:
    """YAML as ``yaml.safe_load`` reads it, but the composed nodes are checked first (see
    ``_check_nodes``): a key given twice in one mapping, a tag that names a Python object, an
    alias inside its own anchor, or aliases that expand past MAX_YAML_VALUES is a SpecError."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, "", {}, set())
        try:
            return loader.construct_document(node)
        except (ValueError, OverflowError) as exc:  # a scalar PyYAML matched but Python cannot build
            raise _unbuildable_scalar(node, exc) from None
    finally:
        loader.dispose()


_SAFE_TAGS = {tag for tag in yaml.SafeLoader.yaml_constructors if tag is not None} | {
    "tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"}  # the keys << and =, read while building mappings


def _check_nodes(node: yaml.Node, where: str, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """Walk the composed YAML (before any value is built) so that an error can name the key's
    path and lines. Returns how many values ``node`` stands for once aliases are expanded;
    ``sizes`` holds that for nodes done (an alias shares its anchor's node), ``open_nodes`` the
    nodes being walked (an alias to one of them is a loop)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise SpecError(where or "<top>", f"refers to itself (an alias inside its anchor at line "
                                          f"{node.start_mark.line + 1}); write the value out")
    _check_tag(node, where)
    open_nodes.add(id(node))
    size = 1
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            size += _check_nodes(item, f"{where}[{i}]", sizes, open_nodes)
    elif isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}  # key -> the line it was first given on
        for key_node, value_node in node.value:
            key = str(key_node.value)
            path, line = f"{where}.{key}" if where else key, key_node.start_mark.line + 1
            _check_tag(key_node, path)
            if isinstance(key_node, yaml.ScalarNode):
                if key in first_line:
                    raise SpecError(path, f"given twice (lines {first_line[key]} and {line}); keep one")
                first_line[key] = line
            size += 1 + _check_nodes(value_node, path, sizes, open_nodes)
    open_nodes.discard(id(node))
    if size > MAX_YAML_VALUES:
        raise SpecError(where or "<top>", f"stands for more than {MAX_YAML_VALUES} values once its YAML aliases are "
                                          f"expanded; a spec is far smaller")
    sizes[id(node)] = size
    return size


def _check_tag(node: yaml.Node, where: str) -> None:
    """Only the tags ``yaml.safe_load`` builds: ``!!python/object...`` would run code in a full
    loader and stops safe_load with "could not determine a constructor"; say what it is instead."""
    if node.tag in _SAFE_TAGS:
        return
    tag = node.tag.replace("tag:yaml.org,2002:", "!!")
    kind = "unsafe" if tag.startswith("!!python/") else "unknown"
    tag = tag if len(tag) <= 60 else tag[:57] + "..."
    raise SpecError(where or "<top>", f"{kind} YAML tag {tag} at line {node.start_mark.line + 1}; "
                                      f"a spec holds plain data: remove the tag")


def _unbuildable_scalar(node: yaml.Node, exc: Exception) -> SpecError:
    """The error for the first scalar under ``node`` that Python cannot build (an integer of
    5000 digits, a date in month 13), naming its path and line."""
    loader = yaml.SafeLoader("")
    try:
        for where, scalar in _scalars(node, "", set()):
            try:
                loader.construct_object(scalar)
            except (ValueError, OverflowError) as scalar_exc:
                reason = str(scalar_exc).split(":")[0]
                return SpecError(where or "<top>", f"YAML cannot read the value at line {scalar.start_mark.line + 1} "
                                                   f"({reason}); write it differently")
    finally:
        loader.dispose()
    return SpecError("<file>", f"cannot be read ({exc})")


def _scalars(node: yaml.Node, where: str, seen: set[int]):
    """(path, node) of every scalar under ``node``, keys included, in file order."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        yield where, node
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _scalars(item, f"{where}[{i}]", seen)
    elif isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = f"{where}.{key_node.value}" if where else str(key_node.value)
            yield from _scalars(key_node, path, seen)
            yield from _scalars(value_node, path, seen)


DEFAULT_SPEC = Path(__file__).resolve().parent / "specs" / "toyworld.yaml"  # package data: found once installed
