"""Dataset sources: where real images and their labels and metadata come from.

Each source lists its items as a small Arrow table (``listing``: a ``source`` key per image, its
``raw_label`` and any metadata columns; no pixels) and reads images by key (``read``), so the
driver plans rows from the listing alone and each generator actor reads only its batch's images.

- ``image_folder``: a class per sub-folder (``path/<class>/<file>``), metadata optionally in a
  ``metadata.csv`` / ``metadata.jsonl`` / ``metadata.parquet`` beside them with a ``file_name``
  column (the Hugging Face imagefolder convention); local or any URI pyarrow.fs opens (s3://, gs://);
- ``parquet``: a file or folder of them: an image column (encoded bytes, a Hugging Face
  ``{bytes, path}`` struct, or a path relative to the file), a label column, metadata columns;
- ``digits``: scikit-learn's bundled 8x8 digits (no download), split in half per class;
- ``idx``: MNIST-style IDX files (``train-``/``t10k-images-idx3-ubyte[.gz]`` and labels), e.g.
  Fashion-MNIST as the Debian package ``dataset-fashion-mnist`` installs it.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import os
import dataclasses
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vbugs_ray.datasets.images import decode, to_rgb
from vbugs_ray.errors import SpecError, cut, one_line, quote
from vbugs_ray.fields import REQUIRED, option

FORMATS = ("image_folder", "parquet", "digits", "idx")
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
INSTALL_FASHION = "sudo apt-get install dataset-fashion-mnist"
WHERE = "generator.options.source"


_CACHES: list = []


def per_process(fn):
    """``functools.lru_cache`` for what is read from a dataset (listings, labels, metadata): the
    driver plans the grid and every verification round from them. ``forget`` empties them all
    when a run starts, so a long-lived process reads data that changed meanwhile."""
    cached = functools.lru_cache(maxsize=8)(fn)
    _CACHES.append(cached)
    return cached


def forget() -> None:
    for cached in _CACHES:
        cached.cache_clear()


_fresh_depth = 0  # how many fresh_listings blocks this process is inside


@contextlib.contextmanager
def fresh_listings() -> Iterator[None]:
    """Datasets read afresh once for the block, however many of its steps read them: a run sees
    its data as it was when it started (an audit's rows, search and verification one listing,
    not one each, which a large remote folder would feel). Nested blocks reuse the outer one's."""
    global _fresh_depth
    if _fresh_depth == 0:
        forget()
    _fresh_depth += 1
    try:
        yield
    finally:
        _fresh_depth -= 1


def _names(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SpecError(where, f"expected a list of column names; got {quote(value)}")
    return tuple(value)


@dataclass(frozen=True)
class SourceOptions:
    """Where the images are and how to read them (``generator.options.source``)."""

    format: str = option(REQUIRED, choices=FORMATS)
    path: str | None = option(None, kind=str)  # a folder, file or URI; idx: the folder (default Fashion-MNIST's)
    split: str = option("test", choices=SPLITS)  # which split is audited (digits, idx, or split_column's)
    split_column: str | None = option(None, kind=str)  # image_folder (metadata) and parquet: a train/test column
    image_column: str = option("image", kind=str)  # parquet
    label_column: str = option("label", kind=str)  # parquet
    metadata: tuple | None = option(None, parse=_names)  # the metadata columns used as axes (None: all)
    size: int = option(32, kind=int, low=8, high=1024)  # every image is resized to size x size RGB
    limit: int | None = option(None, kind=int, low=1)  # at most this many items (the first listed)


def _filesystem(path: str):
    """(pyarrow filesystem, path within it) for a local path or a URI."""
    import pyarrow.fs as pafs

    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def _read_bytes(fs, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return stream.read()


class ImageFolder:
    def __init__(self, options: SourceOptions):
        self.options = options
        if not options.path:
            raise SpecError(f"{WHERE}.path", "image_folder needs the folder's path (a class per sub-folder)")
        self.fs, self.root = _filesystem(options.path)

    def check(self) -> None:
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(self.root)
        if info.type != pafs.FileType.Directory:
            raise SpecError(f"{WHERE}.path", f"no folder at {quote(self.options.path)}; give a folder with a "
                                             "sub-folder of images per class")

    def listing(self) -> pa.Table:
        import pyarrow.fs as pafs

        self.check()
        files = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True))
        keys, labels, names = [], [], []
        for info in sorted((f for f in files if f.type == pafs.FileType.File), key=lambda f: f.path):
            rel = PurePosixPath(info.path).relative_to(PurePosixPath(self.root))
            if len(rel.parts) != 2 or rel.suffix.lower() not in IMAGE_SUFFIXES or rel.name.startswith("."):
                continue
            keys.append(info.path)
            labels.append(rel.parts[0])
            names.append(str(rel))
        if not keys:
            raise SpecError(f"{WHERE}.path", f"{quote(self.options.path)} holds no images in class sub-folders "
                                             f"(path/<class>/<image>; {', '.join(IMAGE_SUFFIXES[:5])}...)")
        table = pa.table({"source": keys, "raw_label": labels, "file_name": names})
        return _join_metadata(table, self._metadata()).drop_columns(["file_name"])

    def _metadata(self) -> pa.Table | None:
        import pyarrow.csv as pacsv
        import pyarrow.json as pajson
        import pyarrow.parquet as pq

        for name in METADATA_FILES:
            path = f"{self.root}/{name}"
            if self.fs.get_file_info(path).type.name != "File":
                continue
            try:
                with self.fs.open_input_file(path) as f:
                    table = (pacsv.read_csv(f, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
                             if name.endswith(".csv") else
                             pajson.read_json(f) if name.endswith(".jsonl") else pq.read_table(f))
            except (pa.ArrowInvalid, OSError) as exc:
                raise SpecError(f"{WHERE}.path", f"cannot read {name}: {cut(one_line(str(exc)), 120)}") from None
            if "file_name" not in table.column_names:
                raise SpecError(f"{WHERE}.path", f"{name} needs a file_name column (each image's path under the "
                                                 f"folder, e.g. cat/1.png); it has {', '.join(table.column_names)}")
            return table
        return None

    def read(self, keys: list[str]) -> list[np.ndarray | str]:
        out = []
        for key in keys:
            try:
                data = _read_bytes(self.fs, key)
            except OSError as exc:
                out.append(cut(one_line(f"{key}: {exc}"), 200))
                continue
            out.append(decode(data, self.options.size, PurePosixPath(key).name))
        return out


OWN_COLUMNS = ("source", "raw_label", "class", "label", "held_out", "data_error")  # what a listing adds


def _check_own(names: list[str], where: str) -> None:
    clash = [c for c in names if c in OWN_COLUMNS]
    if clash:
        raise SpecError(where, f"column {clash[0]!r} is a name vbugs gives its own columns "
                               f"({', '.join(OWN_COLUMNS)}); rename it in the data")


def _join_metadata(table: pa.Table, metadata: pa.Table | None) -> pa.Table:
    """The listing with the metadata rows of its files (left join on file_name: an image the
    metadata does not list gets nulls, marked missing later)."""
    if metadata is None:
        return table
    _check_own(metadata.column_names, f"{WHERE}.path")
    names = pc.cast(metadata.column("file_name"), pa.string())
    if pc.count_distinct(names).as_py() != len(names):
        raise SpecError(f"{WHERE}.path", "the metadata file lists an image twice (file_name); keep one row per image")
    metadata = metadata.set_column(metadata.column_names.index("file_name"), "file_name", names)
    for i, field in enumerate(metadata.schema):  # an all-empty column reads as type null, which Arrow cannot join
        if pa.types.is_null(field.type):
            metadata = metadata.set_column(i, field.name, pa.nulls(metadata.num_rows, pa.string()))
    order = pa.array(np.arange(table.num_rows))
    joined = table.append_column("_order", order).join(metadata, "file_name", join_type="left outer")
    return joined.sort_by("_order").drop_columns(["_order"])


class ParquetImages:
    def __init__(self, options: SourceOptions):
        self.options = options
        if not options.path:
            raise SpecError(f"{WHERE}.path", "parquet needs the path of a Parquet file or folder")
        self.fs, self.root = _filesystem(options.path)
        self._file_column: dict = {}  # the image column of the file last read

    def _dataset(self):
        import pyarrow.dataset as pads

        try:
            # a folder may hold other files beside its Parquet (the images its paths name)
            return pads.dataset(self.root, filesystem=self.fs, format="parquet", exclude_invalid_files=True)
        except (FileNotFoundError, pa.ArrowInvalid, OSError) as exc:
            raise SpecError(f"{WHERE}.path", f"cannot read Parquet at {quote(self.options.path)} "
                                             f"({cut(one_line(str(exc)), 100)})") from None

    def check(self) -> None:
        names = self._dataset().schema.names
        for field in ("image_column", "label_column"):
            column = getattr(self.options, field)
            if column not in names:
                raise SpecError(f"{WHERE}.{field}", f"{column!r} is not a column of {self.options.path}; "
                                                    f"columns: {', '.join(names)}")

    def listing(self) -> pa.Table:
        import pyarrow.parquet as pq

        self.check()
        o = self.options
        parts = []
        for path in sorted(self._dataset().files):
            try:
                with self.fs.open_input_file(path) as f:
                    names = pq.ParquetFile(f).schema_arrow.names
                    table = pq.read_table(f, columns=[c for c in names if c != o.image_column])
            except (pa.ArrowInvalid, OSError) as exc:
                raise SpecError(f"{WHERE}.path", f"cannot read {path} ({cut(one_line(str(exc)), 100)})") from None
            _check_own([c for c in table.column_names if c != o.label_column], f"{WHERE}.path")
            keys = pa.array([f"{path}#{i}" for i in range(table.num_rows)])
            label = table.column(o.label_column)
            if not (pa.types.is_integer(label.type) or pa.types.is_floating(label.type)):
                label = pc.cast(label, pa.string())  # numbers index the classes (rows.class_of), text names them
            table = table.drop_columns([o.label_column])
            parts.append(pa.table({"source": keys, "raw_label": label,
                                   **{n: table.column(n) for n in table.column_names}}))
        return pa.concat_tables(parts, promote_options="permissive")

    def read(self, keys: list[str]) -> list[np.ndarray | str]:
        out: list = [None] * len(keys)
        for i in sorted(range(len(keys)), key=lambda i: keys[i].rpartition("#")[0]):  # each file's rows together
            path, _, row = keys[i].rpartition("#")
            try:
                value = self._row(path, int(row))
            except (OSError, pa.ArrowInvalid, IndexError, ValueError) as exc:
                out[i] = cut(one_line(f"{keys[i]}: {exc}"), 200)
                continue
            out[i] = self._image(value, path, keys[i])
        return out

    def _row(self, path: str, row: int) -> Any:
        """The image cell of one row (a file's image column read once while its rows are read)."""
        import pyarrow.parquet as pq

        if path not in self._file_column:
            self._file_column.clear()  # one file at a time: a batch's rows are read file by file
            with self.fs.open_input_file(path) as f:
                self._file_column[path] = pq.read_table(f, columns=[self.options.image_column]).column(0)
        return self._file_column[path][row].as_py()

    def _image(self, value: Any, path: str, key: str) -> np.ndarray | str:
        """Bytes, a {bytes, path} struct or a path (relative to the Parquet file's folder)."""
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray)):
            return decode(bytes(value), self.options.size, key)
        if isinstance(value, str) and value:
            target = value if ("://" in value or value.startswith("/")) else f"{PurePosixPath(path).parent}/{value}"
            try:
                return decode(_read_bytes(self.fs, target), self.options.size, value)
            except OSError as exc:
                return cut(one_line(f"{value}: {exc}"), 200)
        return f"{key}: no image in column {self.options.image_column!r} ({type(value).__name__})"


def _half(labels: np.ndarray, split: str) -> np.ndarray:
    """Item indexes of ``split``: each class's items alternately train, test, in a fixed
    pseudo-random order (a split of the digits, which ship as one set)."""
    order = np.random.default_rng(20240611).permutation(len(labels))
    keep = []
    for label in np.unique(labels):
        mine = order[labels[order] == label]
        keep.append(mine[(0 if split == "train" else 1)::2])
    return np.sort(np.concatenate(keep))


@functools.lru_cache(maxsize=2)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    return images, data.target.astype(np.int64)


class Digits:
    def __init__(self, options: SourceOptions):
        self.options = options

    def check(self) -> None:
        pass

    def indexes(self, split: str) -> np.ndarray:
        return _half(_digits()[1], split)

    def listing(self) -> pa.Table:
        idx = self.indexes(self.options.split)
        return pa.table({"source": [f"digits#{i}" for i in idx], "raw_label": _digits()[1][idx]})

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(images (N, 8, 8) uint8, labels) of a split: what a classifier trains on."""
        images, labels = _digits()
        idx = self.indexes(split)
        return images[idx], labels[idx]

    def read(self, keys: list[str]) -> list[np.ndarray | str]:
        images = _digits()[0]
        return [to_rgb(images[int(k.rpartition("#")[2])], self.options.size) for k in keys]


IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@per_process
def read_idx(path: str) -> np.ndarray:
    """An IDX file (gzip or not) as an array. Hand-written: the format is a 4-byte magic (type
    0x08 unsigned bytes, then the number of dimensions), big-endian sizes, then the data; the
    maintained readers (torchvision.datasets.mnist) open only uncompressed files by their own layout."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise SpecError(f"{WHERE}.path", f"{path} is not an IDX file of unsigned bytes")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise SpecError(f"{WHERE}.path", f"{path} holds {body.size} values for a shape {shape}: truncated")
    return body.reshape(shape)


class IDX:
    def __init__(self, options: SourceOptions):
        self.options = options
        self.root = os.path.expanduser(options.path or FASHION_MNIST)

    def files(self, split: str) -> tuple[str, str]:
        found = []
        for stem in IDX_FILES[split]:
            path = next((os.path.join(self.root, stem + ext) for ext in (".gz", "") if
                         os.path.isfile(os.path.join(self.root, stem + ext))), None)
            if path is None:
                hint = f"; install it: {INSTALL_FASHION}" if self.root == FASHION_MNIST else ""
                raise SpecError(f"{WHERE}.path", f"no {stem}[.gz] in {self.root}{hint}")
            found.append(path)
        return found[0], found[1]

    def check(self) -> None:
        self.files(self.options.split)

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        images, labels = (read_idx(p) for p in self.files(split))
        return images, labels.astype(np.int64)

    def listing(self) -> pa.Table:
        labels = read_idx(self.files(self.options.split)[1])
        return pa.table({"source": [f"{self.options.split}#{i}" for i in range(len(labels))],
                         "raw_label": labels.astype(np.int64)})

    def read(self, keys: list[str]) -> list[np.ndarray | str]:
        images = read_idx(self.files(self.options.split)[0])
        return [to_rgb(images[int(k.rpartition("#")[2])], self.options.size) for k in keys]


_CLASSES = {"image_folder": ImageFolder, "parquet": ParquetImages, "digits": Digits, "idx": IDX}


def open_source(options: SourceOptions):
    return _CLASSES[options.format](options)


@per_process
def _every_split(options: SourceOptions) -> pa.Table:
    """A source's listing with its split column: one read serves the audited split and the
    training split (a model's fingerprint lists both)."""
    return open_source(options).listing()


@per_process
def listing(options: SourceOptions) -> pa.Table:
    """The source's listing (cached per process: the driver plans the grid and each verification
    round from it): the items of ``split`` when a ``split_column`` says, cut to ``limit`` items."""
    if options.split_column is None:
        table = open_source(options).listing()
    else:  # the format's listing reads every split: split and limit are applied here
        table = _every_split(dataclasses.replace(options, split=SPLITS[0], limit=None))
        if options.split_column not in table.column_names:
            raise SpecError(f"{WHERE}.split_column", f"{options.split_column!r} is not a column of the source; it has "
                                                     f"{', '.join(c for c in table.column_names if c != 'source')}")
        split = pc.cast(table.column(options.split_column), pa.string())
        table = table.filter(pc.fill_null(pc.equal(split, options.split), False)).drop_columns([options.split_column])
    return table.slice(0, options.limit) if options.limit else table


def table_key(table: pa.Table) -> str:
    """A short hash of a table's contents (its Arrow IPC stream)."""
    import hashlib

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue()).hexdigest()[:16]


def fingerprint(options: SourceOptions) -> str:
    """What a model trained on the source depends on: its listings (keys, labels, metadata) of
    the audited split and, when it has one, the training split; part of the models' cache keys."""
    parts = [table_key(listing(options))]
    if has_splits(options):
        parts.append(table_key(listing(dataclasses.replace(options, split="train", limit=None))))
    return "-".join(parts)


def has_splits(options: SourceOptions) -> bool:
    """Whether the source has a training split to train a classifier or an embedder on."""
    return options.format in ("digits", "idx") or options.split_column is not None


def labelled_images(options: SourceOptions, split: str, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, size, size, 3) uint8, class indexes) of a split, the items without a usable
    image or a known class left out: what a model trains on."""
    from vbugs_ray.datasets.rows import class_of

    source = open_source(options)
    if hasattr(source, "arrays"):  # whole arrays at once (digits, idx)
        images, labels = source.arrays(split)
        keep = labels < len(classes)
        return np.stack([to_rgb(im, options.size) for im in images[keep]]), labels[keep]
    table = listing(dataclasses.replace(options, split=split, limit=None))
    _, labels, _ = class_of(table.column("raw_label"), classes)
    read = source.read(table.column("source").to_pylist())
    keep = [i for i, image in enumerate(read) if labels[i] >= 0 and not isinstance(image, str)]
    if not keep:
        raise SpecError(f"{WHERE}.split_column", f"the {split} split holds no readable image of the spec's classes")
    return np.stack([read[i] for i in keep]), labels[keep]
