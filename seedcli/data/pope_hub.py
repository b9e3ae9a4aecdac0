"""POPE in the hub's dataset layout (parquet, as lmms-lab/POPE publishes it) -> official POPE rows.

Layout: one or more parquet files (e.g. data/test-00000-of-00003.parquet) with the columns
question_id, question, answer (yes/no), image_source (COCO file stem), category (random, popular,
adversarial) and image (embedded: a struct with the encoded `bytes` and the original `path`).
Each category becomes a split; each question becomes {"question_id", "image", "text", "label"}
like the official files; each embedded image is written once into a directory of the data
directory, named image_source plus the extension of its encoding, so COCO ids stay readable.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seedcli import atomic
from seedcli.data.datadir import POPE_SPLITS, check_image_path
from seedcli.errors import DataError

COLUMNS = ("question_id", "question", "answer", "image_source", "category")
IMAGE_COLUMN = "image"
IMAGE_DIR = "images/pope"
"""Where the embedded images go, relative to the data directory."""


def parquet_files(path: Path) -> list[Path]:
    """The parquet files of the hub layout at `path` (a file, or a directory searched recursively)."""
    path = Path(path)
    if path.is_file():
        return [path] if path.suffix == ".parquet" else []
    return sorted(path.rglob("*.parquet")) if path.is_dir() else []


def is_hub_layout(path: Path | None) -> bool:
    """Whether `--pope-from` points at parquet files rather than the official JSON files."""
    return path is not None and bool(parquet_files(Path(path)))


def _extension(data: bytes, original: str | None) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    suffix = Path(original or "").suffix.lower()
    return suffix if suffix in (".jpg", ".jpeg", ".png", ".webp", ".bmp") else ".jpg"


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DataError(f"--pope-from {path}: not a readable parquet file ({type(exc).__name__}: {exc}).") from None
    missing = [c for c in (*COLUMNS, IMAGE_COLUMN) if c not in table.column_names]
    if missing:
        expected = ", ".join((*COLUMNS, IMAGE_COLUMN))
        raise DataError(
            f"--pope-from {path}: missing column(s) {', '.join(missing)}; the hub's POPE layout has {expected}."
        )
    number = 0
    for batch in table.to_batches(max_chunksize=512):  # batches: the embedded images need not all be in memory twice
        for row in batch.to_pylist():
            yield number, row
            number += 1


def read_hub_pope(path: Path, images_to: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[str]]]:
    """Rows per split in file order, and the parquet files each split came from; writes the images."""
    files = parquet_files(path)
    if not files:
        raise DataError(f"--pope-from {path}: no parquet files found.")
    splits: dict[str, list[dict[str, Any]]] = {split: [] for split in POPE_SPLITS}
    sources: dict[str, list[str]] = {split: [] for split in POPE_SPLITS}
    written: dict[str, str] = {}
    first_seen: dict[tuple[str, int], Path] = {}
    for file in files:
        for number, row in _rows(file):
            where = f"--pope-from {file} row {number + 1}"
            split = str(row["category"]).strip().lower()
            if split not in splits:
                raise DataError(f"{where}: category {row['category']!r} is not one of {', '.join(POPE_SPLITS)}.")
            label = str(row["answer"]).strip().lower()
            if label not in ("yes", "no"):
                raise DataError(f"{where}: answer must be yes or no, got {row['answer']!r}.")
            try:
                question_id = int(row["question_id"])
            except (TypeError, ValueError):
                raise DataError(f"{where}: question_id {row['question_id']!r} is not an integer.") from None
            if (split, question_id) in first_seen:
                raise DataError(
                    f"{where}: question_id {question_id} of the {split} split was already read from "
                    f"{first_seen[split, question_id]}; point --pope-from at one copy of the set (e.g. its data/)."
                )
            first_seen[split, question_id] = file
            image = row[IMAGE_COLUMN] or {}
            data = image.get("bytes") if isinstance(image, dict) else None
            if not data:
                raise DataError(f"{where}: the image column holds no embedded bytes.")
            stem = str(row["image_source"]).strip()
            name = written.get(stem) or check_image_path(stem + _extension(data, image.get("path")), where=where)
            if stem not in written:
                atomic.write_bytes(Path(images_to) / name, data)
                written[stem] = name
            splits[split].append(
                {"question_id": question_id, "image": name, "text": str(row["question"]), "label": label}
            )
            if str(file) not in sources[split]:
                sources[split].append(str(file))
    empty = [split for split, rows in splits.items() if not rows]
    if empty:
        raise DataError(f"--pope-from {path}: no questions for the {', '.join(empty)} split(s) (column category).")
    return splits, sources
