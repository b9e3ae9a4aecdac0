"""LLaVA-Instruct conversion: stream the JSON array, validate, filter, sample, check images.

Input: a JSON array of {"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}
(llava_instruct_150k.json is 230 MB, so it is decoded item by item from a sliding text window).
Output: `Record`s of the data directory: roles mapped to user/assistant, every turn kept, the
"<image>" token removed from the text because the image belongs to the first user turn and each
model's chat template places its own image token there.

Each record is checked in this order and the first failing check is counted as its drop reason:
malformed_record, no_image, absolute_image_path, image_path_escapes_root, empty_conversation,
one_sided_conversation, duplicate_id, image_missing, eval_overlap; after sampling,
image_unreadable (only with verify_images, which decodes every selected image in worker processes).

Ids: LLaVA ids are image ids and repeat across conversations about the same image (about half of
llava_instruct_150k). A repeated id with the same image and conversation is a duplicate and is
dropped; a repeated id with a different conversation is kept under "{id}#{n}" (counted as renamed).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import multiprocessing
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seedcli.data.coco import alternative_names, image_id_from_name
from seedcli.data.datadir import Record, check_image_path
from seedcli.errors import DataError
from seedcli.reporting import Reporter

IMAGE_TOKEN = "<image>"
ROLE_MAP = {"human": "user", "gpt": "assistant"}
CHUNK_BYTES = 1 << 20
LOOKAHEAD_CHARS = 64
"""Text needed after a JSON error before it cannot be a value cut by the read window."""
DROP_REASONS = (
    "malformed_record",
    "no_image",
    "absolute_image_path",
    "image_path_escapes_root",
    "empty_conversation",
    "one_sided_conversation",
    "duplicate_id",
    "image_missing",
    "eval_overlap",
    "image_unreadable",
)
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*\Z")
"""A bare file name: relative and unable to escape its root, so the path checks can be skipped."""


# --- streaming JSON array reader -------------------------------------------------------------


class _Window:
    """A sliding window of decoded text over a UTF-8 file that remembers absolute positions."""

    def __init__(self, handle: Any, where: str, chunk_bytes: int, on_bytes: Callable[[bytes], None] | None) -> None:
        self.handle, self.where, self.chunk_bytes, self.on_bytes = handle, where, chunk_bytes, on_bytes
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.text = ""
        self.base = 0  # absolute character offset of text[0]
        self.lines = 0  # newlines before text[0]
        self.line_start = 0  # absolute offset where the line holding text[0] starts
        self.bytes_read = 0
        self.eof = False

    def fill(self) -> bool:
        """Append at least one more character; False once the file is exhausted."""
        if self.eof:
            return False
        grown = len(self.text)
        while len(self.text) == grown and not self.eof:
            raw = self.handle.read(self.chunk_bytes)
            try:
                self.text += self.decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as exc:
                raise DataError(f"{self.where}: not UTF-8 text near byte {self.bytes_read + exc.start}.") from None
            self.bytes_read += len(raw)
            if self.on_bytes and raw:
                self.on_bytes(raw)
            self.eof = not raw
        return True

    def trim(self, pos: int) -> None:
        """Forget text[:pos], keeping line bookkeeping for error positions."""
        head = self.text[:pos]
        newlines = head.count("\n")
        if newlines:
            self.lines += newlines
            self.line_start = self.base + head.rfind("\n") + 1
        self.base += pos
        self.text = self.text[pos:]

    def position(self, pos: int) -> str:
        """'line L column C (character N)' of text[pos], 1-based like `json`'s messages."""
        head = self.text[:pos]
        newlines = head.count("\n")
        line = self.lines + newlines + 1
        column = pos - head.rfind("\n") if newlines else self.base + pos - self.line_start + 1
        return f"line {line} column {column} (character {self.base + pos})"

    def skip_whitespace(self, pos: int) -> int:
        """Index of the next non-whitespace character, reading more as needed (len(text) at EOF)."""
        while True:
            pos = _WHITESPACE.match(self.text, pos).end()  # type: ignore[union-attr]
            if pos < len(self.text) or not self.fill():
                return pos


def iter_json_array(
    path: Path,
    *,
    where: str,
    chunk_bytes: int = CHUNK_BYTES,
    on_bytes: Callable[[bytes], None] | None = None,
) -> Iterator[Any]:
    """Yield the items of a top-level JSON array without loading the whole file.

    Malformed JSON raises a DataError with `where` and the line, column and character offset.
    """
    decoder = json.JSONDecoder()
    with open(path, "rb") as handle:
        window = _Window(handle, where, chunk_bytes, on_bytes)

        def fail(pos: int, message: str) -> DataError:
            return DataError(f"{where}: invalid JSON at {window.position(pos)}: {message}.")

        pos = window.skip_whitespace(0)
        if window.text[pos : pos + 1] != "[":
            raise fail(pos, "expected a JSON array '['")
        pos = window.skip_whitespace(pos + 1)
        first = True
        while True:
            if pos >= len(window.text):
                raise fail(pos, "unexpected end of file inside the array")
            if window.text[pos] == "]":
                end = window.skip_whitespace(pos + 1)
                if end < len(window.text):
                    raise fail(end, "extra data after the array")
                return
            if not first:
                if window.text[pos] != ",":
                    raise fail(pos, "expected ',' or ']'")
                pos = window.skip_whitespace(pos + 1)
            first = False
            item, pos = _decode_value(decoder, window, pos, fail)
            yield item
            if pos > chunk_bytes:
                window.trim(pos)
                pos = 0
            pos = window.skip_whitespace(pos)


def _decode_value(
    decoder: json.JSONDecoder, window: _Window, pos: int, fail: Callable[[int, str], DataError]
) -> tuple[Any, int]:
    """Decode one value at `pos`, reading more text while the value may be cut by the window."""
    while True:
        try:
            value, end = decoder.raw_decode(window.text, pos)
        except json.JSONDecodeError as exc:
            # A value cut by the window end fails too. Errors point at the offending character,
            # so one with enough text after it is real; an unterminated string points at its
            # start and is only known to be real at the end of the file.
            cut = exc.msg.startswith("Unterminated string") or exc.pos + LOOKAHEAD_CHARS > len(window.text)
            if window.eof or not cut:
                raise fail(exc.pos, exc.msg) from None
            window.fill()
            continue
        # A number could continue past the window end; read on before trusting it.
        if end == len(window.text) and not window.eof:
            window.fill()
            continue
        return value, end


# --- records ---------------------------------------------------------------------------------


def convert_turns(turns: Any) -> tuple[dict[str, str], ...] | str:
    """Map LLaVA turns to {role, content} messages without the image token, or return a drop reason."""
    if not isinstance(turns, list):
        return "malformed_record"
    messages = []
    for turn in turns:
        if not isinstance(turn, dict) or turn.get("from") not in ROLE_MAP or not isinstance(turn.get("value"), str):
            return "malformed_record"
        text = turn["value"].replace(IMAGE_TOKEN, "").strip()
        messages.append({"role": ROLE_MAP[turn["from"]], "content": text})
    if not any(m["content"] for m in messages):
        return "empty_conversation"
    # A user turn may hold only the image (its text is then empty); an answer needs text.
    has_user = any(m["role"] == "user" for m in messages)
    if not has_user or not any(m["role"] == "assistant" and m["content"] for m in messages):
        return "one_sided_conversation"
    if messages[0]["role"] != "user":
        return "malformed_record"
    return tuple(messages)


def path_problem(image: str) -> str | None:
    """Drop reason for an image path that is absolute or escapes the image root, else None."""
    try:
        check_image_path(image, where="image")
    except DataError:
        absolute = image.startswith(("/", "\\")) or (len(image) > 1 and image[1] == ":")
        return "absolute_image_path" if absolute else "image_path_escapes_root"
    return None


@dataclass(frozen=True)
class ImageIndex:
    """Files under an image root; top-level names are listed once, nested paths are stat-ed.

    Symbolic links are resolved before the escape check: a link inside the root that points outside
    it is not an image of the root (`escapes` says so, and prepare drops the record with a reason).
    """

    root: Path
    top_level: frozenset[str]
    links: frozenset[str] = frozenset()

    @classmethod
    def scan(cls, root: Path) -> ImageIndex:
        """List the file names directly under `root` (and which of them are symbolic links)."""
        files, links = set(), set()
        with os.scandir(root) as entries:
            for entry in entries:
                if entry.is_file():
                    files.add(entry.name)
                    if entry.is_symlink():  # d_type only: no extra system call for plain files
                        links.add(entry.name)
        return cls(Path(root), frozenset(files), frozenset(links))

    def escapes(self, relative: str) -> bool:
        """Whether `relative`, with every link resolved, lies outside the root."""
        if "/" not in relative and relative not in self.links:
            return False  # a plain file listed directly under the root
        real_root = self.root.resolve()
        return not (self.root / relative).resolve().is_relative_to(real_root)

    def exists(self, relative: str) -> bool:
        """Whether `relative` names a file under the root."""
        if "/" not in relative:
            return relative in self.top_level
        return (self.root / relative).is_file()

    def find(self, image: str) -> str | None:
        """The name under which `image` exists (as given, or its train2014/train2017 spelling)."""
        if self.exists(image):
            return image
        return next((name for name in alternative_names(image) if self.exists(name)), None)


@dataclass
class ScanResult:
    """Records that passed the streaming checks, with counts."""

    records: list[Record]
    read: int = 0
    renamed_ids: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    sha256: str = ""


def scan_instruct(
    path: Path,
    image_root: Path,
    *,
    eval_ids: frozenset[int] = frozenset(),
    allow_eval_overlap: bool = False,
    reporter: Reporter,
    where: str = "--instruct",
    chunk_bytes: int = CHUNK_BYTES,
) -> ScanResult:
    """Stream LLaVA-Instruct records from `path` and keep those passing every check before sampling."""
    path = Path(path)
    index = ImageIndex.scan(image_root)
    result = ScanResult(records=[])
    digest = hashlib.sha256()
    seen: dict[str, set[tuple[Any, ...]]] = {}  # id -> contents seen, to tell duplicates from reuse
    size = path.stat().st_size
    read_bytes = reported = 0

    def on_bytes(raw: bytes) -> None:
        nonlocal read_bytes
        digest.update(raw)
        read_bytes += len(raw)

    with reporter.task(f"reading {path.name}", total=size, unit="B") as task:
        for item in iter_json_array(path, where=f"{where} {path}", chunk_bytes=chunk_bytes, on_bytes=on_bytes):
            result.read += 1
            outcome = _check_item(item, index, seen, eval_ids, allow_eval_overlap)
            if isinstance(outcome, str):
                result.dropped[outcome] += 1
            else:
                record, renamed = outcome
                result.records.append(record)
                result.renamed_ids += renamed
            # Bytes are read ahead of parsing: hold the bar below 100% until the last item.
            step = min(read_bytes, size - 1) - reported
            if step > 0:
                task.advance(step, kept=len(result.records), dropped=sum(result.dropped.values()))
                reported += step
        task.advance(size - reported, kept=len(result.records), dropped=sum(result.dropped.values()))
    result.sha256 = digest.hexdigest()
    return result


def _check_item(
    item: Any,
    index: ImageIndex,
    seen: dict[str, set[tuple[Any, ...]]],
    eval_ids: frozenset[int],
    allow_eval_overlap: bool,
) -> tuple[Record, bool] | str:
    if not isinstance(item, dict) or "id" not in item or "conversations" not in item:
        return "malformed_record"
    image = item.get("image")
    if not image:
        return "no_image"
    if not isinstance(image, str):
        return "malformed_record"
    if not _PLAIN_NAME.match(image):
        problem = path_problem(image)
        if problem:
            return problem
        image = check_image_path(image, where="image")
    messages = convert_turns(item["conversations"])
    if isinstance(messages, str):
        return messages
    rid = str(item["id"])
    # Exact content as the key: equal strings share cached hashes, so this costs little.
    content = (image, tuple((m["role"], m["content"]) for m in messages))
    versions = seen.setdefault(rid, set())
    if content in versions:
        return "duplicate_id"
    versions.add(content)
    stored_id = rid if len(versions) == 1 else f"{rid}#{len(versions)}"
    found = index.find(image)
    if found is None:
        return "image_missing"
    if index.escapes(found):
        return "image_path_escapes_root"
    if not allow_eval_overlap and image_id_from_name(found) in eval_ids:
        return "eval_overlap"
    # convert_turns already enforces everything validate_record checks; build the Record directly.
    return Record(id=stored_id, image=found, messages=messages), len(versions) > 1


# --- image decoding and sampling -------------------------------------------------------------


def image_decodes(path: str) -> bool:
    """Whether PIL can fully decode the image at `path`."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except Exception:  # noqa: BLE001 - any decoder failure means "unreadable"
        return False
    return True


def decode_images(paths: Sequence[str], workers: int) -> list[bool]:
    """`image_decodes` over `paths`, in `workers` spawned processes (in-process when workers <= 1)."""
    if workers <= 1 or len(paths) <= 1:
        return [image_decodes(p) for p in paths]
    chunk = max(1, len(paths) // (workers * 4))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(image_decodes, paths, chunksize=chunk))


def default_workers() -> int:
    """One worker per available CPU core."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def select_records(
    records: Sequence[Record],
    image_root: Path,
    *,
    max_samples: int | None,
    seed: int,
    verify_images: bool,
    workers: int,
    reporter: Reporter,
    batch: int = 4096,
) -> tuple[list[Record], int]:
    """Draw up to `max_samples` records in a seeded order, dropping undecodable images if asked.

    Returns the chosen records in input order and how many were found unreadable. Images are
    decoded in the draw order until enough records are kept, so `max_samples` is met whenever
    enough readable records exist and only the images needed are decoded.
    """
    order = list(range(len(records)))
    if max_samples is not None:
        random.Random(seed).shuffle(order)
    target = len(records) if max_samples is None else min(max_samples, len(records))
    if not verify_images:
        return [records[i] for i in sorted(order[:target])], 0
    chosen: list[int] = []
    verdicts: dict[str, bool] = {}
    unreadable = 0
    start = 0
    with reporter.task("decoding images", total=target, unit="img") as task:
        while len(chosen) < target and start < len(order):
            step = order[start : start + min(batch, target - len(chosen))]
            start += len(step)
            todo = sorted({records[i].image for i in step} - set(verdicts))
            verdicts.update(zip(todo, decode_images([str(image_root / name) for name in todo], workers), strict=True))
            for i in step:
                if verdicts[records[i].image]:
                    chosen.append(i)
                else:
                    unreadable += 1
            task.advance(len(step), unreadable=unreadable)
    return [records[i] for i in sorted(chosen)], unreadable
