"""The detection item format (JSON Lines) and its validating reader, writer and importer.

One item per line. Track 1 (hallucination detection)::

    {"id": "t1-0", "image": "images/x.png", "caption": "The image shows a red fork ...",
     "options": [{"id": "A", "text": "red fork", "kind": "attribute"}, ...], "labels": ["A"]}

`labels` lists the ids of the hallucinated options (the ones the image does not support); every
option text must occur in the caption. Track 2 (factuality checking)::

    {"id": "t2-0", "image": "images/y.png", "context": "The image shows ...", "claim": "the fork is red.",
     "labels": ["factual"]}

with `labels` one of ["factual"] or ["not_factual"]. `labels` may be absent in files given to
`seed detect run`. A relative `image` is resolved against the JSONL file's directory (or the image
root given to the reader).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seedcli import atomic
from seedcli.errors import DataError

OPTION_KINDS = ("object", "attribute", "relation")
FACTUAL, NOT_FACTUAL = "factual", "not_factual"


@dataclass(frozen=True)
class Option:
    """One phrase of a caption that may be hallucinated."""

    id: str
    text: str
    kind: str


@dataclass(frozen=True)
class Item:
    """A Track 1 item (caption + options) or a Track 2 item (context + claim)."""

    id: str
    image: Path
    track: int
    text: str  # the caption (Track 1) or the claim (Track 2)
    context: str | None = None
    options: tuple[Option, ...] = ()
    labels: tuple[str, ...] | None = None

    def hallucinated(self) -> dict[str, bool]:
        """Track 1: option id -> hallucinated (requires labels)."""
        assert self.labels is not None
        return {o.id: o.id in self.labels for o in self.options}

    def factual(self) -> bool:
        """Track 2: whether the claim is factual (requires labels)."""
        assert self.labels is not None
        return self.labels == (FACTUAL,)

    def to_row(self, base: Path | None = None) -> dict[str, Any]:
        """The JSON object of this item; the image relative to `base` when it lies below it, else absolute."""
        # Relative to the file when the image lies below its directory, else absolute: never
        # relative to the working directory, which a later reader does not know.
        image = Path(os.path.abspath(self.image))
        if base is not None and image.is_relative_to(base):
            image = image.relative_to(base)
        row: dict[str, Any] = {"id": self.id, "image": image.as_posix()}
        if self.track == 1:
            row["caption"] = self.text
            row["options"] = [{"id": o.id, "text": o.text, "kind": o.kind} for o in self.options]
        else:
            if self.context is not None:
                row["context"] = self.context
            row["claim"] = self.text
        if self.labels is not None:
            row["labels"] = list(self.labels)
        return row


def _text(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: {key!r} is empty or not a string.")
    return value


def _options(row: dict[str, Any], caption: str, where: str) -> tuple[Option, ...]:
    raw = row.get("options")
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{where}: a caption item needs a non-empty 'options' list.")
    options, seen = [], set()
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise DataError(f"{where}: option {i} is not an object.")
        oid, text, kind = (str(entry.get(k, "")).strip() for k in ("id", "text", "kind"))
        if not oid or not text:
            raise DataError(f"{where}: option {i} needs a non-empty 'id' and 'text'.")
        if oid in seen:
            raise DataError(f"{where}: option id {oid!r} is used twice.")
        if kind not in OPTION_KINDS:
            raise DataError(f"{where}: option {oid!r} has kind {kind!r}; expected one of {', '.join(OPTION_KINDS)}.")
        if text.lower() not in caption.lower():
            raise DataError(f"{where}: option {oid!r} text {text!r} does not occur in the caption.")
        seen.add(oid)
        options.append(Option(id=oid, text=text, kind=kind))
    return tuple(options)


def parse_item(row: Any, *, image_root: Path, where: str, require_labels: bool) -> Item:
    """Validate one decoded JSON object and return it as an Item (DataError naming the problem)."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object.")
    item_id = str(row.get("id", "")).strip()
    if not item_id:
        raise DataError(f"{where}: missing 'id'.")
    where = f"{where} (item {item_id})"
    image_name = _text(row, "image", where)
    image = Path(image_name).expanduser()
    image = image if image.is_absolute() else image_root / image
    if not image.is_file():
        raise DataError(f"{where}: unknown image {image_name!r} (no file {image}).")
    if ("caption" in row) == ("claim" in row):
        raise DataError(f"{where}: needs exactly one of 'caption' (Track 1) or 'claim' (Track 2).")
    labels = row.get("labels")
    if labels is None and require_labels:
        raise DataError(f"{where}: missing 'labels' (needed for training and evaluation).")
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
        raise DataError(f"{where}: 'labels' must be a list of strings.")
    if "caption" in row:
        caption = _text(row, "caption", where)
        options = _options(row, caption, where)
        if labels is not None:
            unknown = sorted(set(labels) - {o.id for o in options})
            if unknown:
                raise DataError(f"{where}: labels name unknown option ids {unknown}.")
        return Item(item_id, image, 1, caption, None, options, None if labels is None else tuple(labels))
    claim = _text(row, "claim", where)
    context = row.get("context")
    if context is not None and not isinstance(context, str):
        raise DataError(f"{where}: 'context' must be a string.")
    if "options" in row:
        raise DataError(f"{where}: a claim item takes no 'options'.")
    if labels is not None and labels not in ([FACTUAL], [NOT_FACTUAL]):
        raise DataError(f"{where}: claim labels must be [{FACTUAL!r}] or [{NOT_FACTUAL!r}] (got {labels}).")
    return Item(item_id, image, 2, claim, context, (), None if labels is None else tuple(labels))


def read_items(
    path: Path, *, image_root: Path | None = None, require_labels: bool = False, flag: str = "--input"
) -> list[Item]:
    """Read and validate a detection JSONL file; the first bad line raises one DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{flag} {path}: no such file.")
    root = Path(image_root) if image_root is not None else path.parent
    items, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg}).") from None
        item = parse_item(row, image_root=root, where=where, require_labels=require_labels)
        if item.id in seen:
            raise DataError(f"{where}: item id {item.id!r} appears twice.")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise DataError(f"{flag} {path}: the file holds no items.")
    return items


def write_items(path: Path, items: list[Item]) -> None:
    """Write items atomically, images relative to the file's directory where possible."""
    path = Path(path)
    atomic.write_jsonl(path, [item.to_row(path.parent.resolve()) for item in items])


def import_items(source: Path, dest: Path, *, image_root: Path | None = None) -> int:
    """Validate an external file and copy it with its images into `dest` (file + images/ beside it)."""
    items = read_items(source, image_root=image_root, require_labels=False)
    dest = Path(dest)
    images = dest.parent / "images" / dest.stem
    copied: list[Item] = []
    names: dict[Path, str] = {}
    for item in items:
        if item.image not in names:
            names[item.image] = f"{len(names):06d}{item.image.suffix}"
            images.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.image, images / names[item.image])
        copied.append(
            Item(
                item.id,
                (images / names[item.image]).resolve(),
                item.track,
                item.text,
                item.context,
                item.options,
                item.labels,
            )
        )
    write_items(dest, copied)
    return len(copied)
