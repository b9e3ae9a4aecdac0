"""The data directory written by `seed prepare` and read by `distill` and `evaluate`.

Layout (format version 1)::

    DATA/
      manifest.json      format, version, source, created, seed, counts, dropped, image roots,
                         sources and sha256 checksums of every file below
      train/             a `datasets` dataset (save_to_disk) of {id, image, messages}
      pope/              coco_pope_{random,popular,adversarial}.json, official POPE JSONL format
      chair/images.jsonl {"image_id", "image", "objects": [category, ...]} per CHAIR image
      images/            (synthetic world only) rendered images

`image` paths are relative to the image root of their part (manifest `image_roots`); a root that
is relative is resolved against DATA itself, so a data directory can be moved as a whole.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from seedcli import atomic
from seedcli.errors import DataError

FORMAT = "seedcli-data"
VERSION = 1
MANIFEST = "manifest.json"
TRAIN_DIR = "train"
POPE_DIR = "pope"
CHAIR_FILE = "chair/images.jsonl"
POPE_SPLITS = ("random", "popular", "adversarial")
ROLES = ("user", "assistant")


def pope_file(split: str) -> str:
    """Relative path of a POPE split inside a data directory."""
    return f"{POPE_DIR}/coco_pope_{split}.json"


@dataclass(frozen=True)
class Record:
    """One training conversation; the image belongs to the first user turn."""

    id: str
    image: str
    messages: tuple[dict[str, str], ...]

    def to_row(self) -> dict[str, Any]:
        """Plain dict as stored in the dataset."""
        return {"id": self.id, "image": self.image, "messages": [dict(m) for m in self.messages]}


def check_image_path(image: str, *, where: str) -> str:
    """Return a normalised relative image path, or raise if it is absolute or escapes its root."""
    pure = PurePosixPath(image.replace("\\", "/"))
    if pure.is_absolute() or image.startswith("/") or (len(image) > 1 and image[1] == ":"):
        raise DataError(f"{where}: image path {image!r} is absolute; paths must be relative to the image root.")
    if any(part == ".." for part in pure.parts):
        raise DataError(f"{where}: image path {image!r} escapes the image root.")
    return str(pure)


def validate_record(row: dict[str, Any], *, where: str = "record") -> Record:
    """Check one stored row and return it as a Record (raises DataError naming the problem)."""
    try:
        rid, image, messages = str(row["id"]), str(row["image"]), row["messages"]
    except KeyError as missing:
        raise DataError(f"{where}: missing field {missing}.") from None
    if not messages:
        raise DataError(f"{where} {rid}: no messages.")
    for i, message in enumerate(messages):
        if message.get("role") not in ROLES:
            raise DataError(f"{where} {rid}: message {i} has role {message.get('role')!r}, expected user|assistant.")
    if messages[0]["role"] != "user":
        raise DataError(f"{where} {rid}: the first message must be the user's.")
    if not any(m["role"] == "assistant" and str(m["content"]).strip() for m in messages):
        raise DataError(f"{where} {rid}: no assistant message to supervise.")
    return Record(
        id=rid,
        image=check_image_path(image, where=f"{where} {rid}"),
        messages=tuple({"role": m["role"], "content": str(m["content"])} for m in messages),
    )


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def train_features() -> Any:
    """The `datasets.Features` of the train split."""
    import datasets

    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Value("string"),
            "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        }
    )


def write_train(root: Path, records: Iterable[Record]) -> int:
    """Write records as DATA/train (a `datasets` dataset); returns the number written."""
    import datasets
    import pyarrow as pa

    datasets.disable_progress_bars()
    rows = [record.to_row() for record in records]
    features = train_features()
    # Building the Arrow table directly is ~5x faster than Dataset.from_list at 150k records.
    dataset = datasets.Dataset(pa.Table.from_pylist(rows, schema=features.arrow_schema))
    dataset.save_to_disk(str(Path(root) / TRAIN_DIR))
    return len(rows)


def write_manifest(
    root: Path,
    *,
    source: dict[str, Any],
    seed: int | None,
    counts: dict[str, int],
    dropped: dict[str, int],
    image_roots: dict[str, str],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write manifest.json last (checksums of every other file included) and return it."""
    root = Path(root)
    files = {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST and "images" not in p.relative_to(root).parts[:1]
    }
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "seed": seed,
        "counts": counts,
        "dropped": dropped,
        "image_roots": image_roots,
        "files": files,
        **(extra or {}),
    }
    atomic.write_json(root / MANIFEST, manifest)
    return manifest


@dataclass(frozen=True)
class DataDir:
    """A validated data directory opened for reading."""

    root: Path
    manifest: dict[str, Any] = field(repr=False)

    def image_root(self, part: str) -> Path:
        """Absolute image root of `part` (train, pope, chair)."""
        roots = self.manifest.get("image_roots", {})
        if part not in roots:
            raise DataError(f"{self.root}/{MANIFEST} has no image root for {part!r}; re-run `seed prepare`.")
        root = Path(roots[part]).expanduser()
        return root if root.is_absolute() else (self.root / root)

    def resolve_image(self, part: str, image: str) -> Path:
        """Absolute path of an image of `part`; refuses paths escaping the root."""
        return self.image_root(part) / check_image_path(image, where=f"{self.root.name}/{part}")

    def has_train(self) -> bool:
        """Whether the directory holds a training split."""
        return (self.root / TRAIN_DIR).is_dir()

    def train(self) -> Any:
        """The training split as a `datasets.Dataset`."""
        import datasets

        if not self.has_train():
            raise DataError(f"{self.root} has no training split ({TRAIN_DIR}/); run `seed prepare` with training data.")
        import pyarrow as pa

        where = self.root / TRAIN_DIR
        try:
            return datasets.load_from_disk(str(where))
        except (pa.ArrowException, OSError, ValueError, KeyError) as exc:
            # Truncated Arrow files raise OSError without an errno, garbage ones ArrowInvalid.
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(
                f"{where}: corrupt training split ({first}); rebuild it with `seed prepare --overwrite`."
            ) from None

    def pope_path(self, split: str) -> Path:
        """Path of a POPE split file; raises if this data directory has none."""
        path = self.root / pope_file(split)
        if not path.is_file():
            raise DataError(
                f"{self.root} has no POPE {split} split ({pope_file(split)}); "
                "run `seed prepare` with --coco-annotations."
            )
        return path

    def chair_images(self) -> list[dict[str, Any]]:
        """CHAIR evaluation images with their ground-truth categories."""
        path = self.root / CHAIR_FILE
        if not path.is_file():
            raise DataError(f"{self.root} has no CHAIR set ({CHAIR_FILE}); run `seed prepare` with --coco-annotations.")
        return atomic.read_jsonl(path)

    def iter_train(self) -> Iterator[Record]:
        """Training records, validated."""
        for row in self.train():
            yield validate_record(row, where=f"{self.root}/train")


def open_data_dir(path: Path, *, flag: str = "--data") -> DataDir:
    """Open and check a data directory; the error names the flag and the path tried."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise DataError(
            f"{flag} {path}: no such directory; create one with `seed prepare` (or `seed prepare --synthetic`)."
        )
    if not manifest_path.is_file():
        raise DataError(f"{flag} {path}: no {MANIFEST}; it is not a complete data directory (re-run `seed prepare`).")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{manifest_path}: invalid JSON at line {exc.lineno} column {exc.colno}.") from None
    if manifest.get("format") != FORMAT or int(manifest.get("version", -1)) > VERSION:
        raise DataError(
            f"{manifest_path}: format {manifest.get('format')!r} v{manifest.get('version')} is not readable "
            f"by this seedcli (needs {FORMAT} v<={VERSION})."
        )
    return DataDir(root=path, manifest=manifest)
