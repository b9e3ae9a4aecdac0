"""Fetch the public inputs of `seed prepare` into the conventional layout under --data-root.

What is fetched, from where, and how it is checked (see docs/data.md):

    DATA_ROOT/
      llava_instruct_150k.json   LLaVA-Instruct-150K, from its dataset repository on the Hugging Face hub
      annotations/               COCO 2014 annotations (annotations_trainval2014.zip)
      val2014/                   COCO val2014 images (val2014.zip): the POPE and CHAIR images
      train2014/                 COCO train2014 images (train2014.zip): the training images
      pope/coco_pope_*.json      the official POPE files (--pope-from official)
      downloads/                 archives while they download (NAME.partial) and until they are extracted

Only an input that sits at its layout path and is missing is fetched; a path given elsewhere is used
as given, and an existing layout directory is never touched. A download is staged as NAME.partial
(resumed with an HTTP Range request after a failure or a kill), checked against its size and
sha256, and renamed only when complete; an archive is extracted into a hidden staging directory that
is renamed into place in one step, so a path without a staging suffix is always complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import http.client
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from seedcli import __version__
from seedcli.config.prepare import PrepareConfig
from seedcli.data.pope_hub import is_hub_layout
from seedcli.errors import ConfigError, DataError, SeedError, StorageError
from seedcli.reporting import Reporter, Task

COCO_URL_ENV = "SEEDCLI_COCO_URL"
POPE_URL_ENV = "SEEDCLI_POPE_URL"
COCO_URL = "http://images.cocodataset.org"
POPE_COMMIT = "3df3ba1b110ecce25696989577fad583b67d4239"
POPE_URL = f"https://raw.githubusercontent.com/RUCAIBox/POPE/{POPE_COMMIT}/output/coco"
INSTRUCT_REPO = "liuhaotian/LLaVA-Instruct-150K"
INSTRUCT_FILE = "llava_instruct_150k.json"
INSTRUCT_REVISION = "main"
OFFICIAL_POPE = Path("official")
"""`--pope-from official`: fetch the released POPE files instead of reading a directory."""
CONFIRM_BYTES = 1_000_000_000
"""Downloads above this size need --yes or a confirmation on a terminal."""
DOWNLOADS = "downloads"
LOCKS = ".locks"
PARTIAL = ".partial"
CHUNK = 1 << 20
RETRIES = 4
"""Attempts after a dropped connection or a 5xx answer before giving up (the next run resumes)."""
RETRY_WAIT_S = 2.0
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Remote:
    """One file to fetch: where from, how large, and the checksum we pin (None: not pinned)."""

    key: str
    name: str
    url: str
    size: int
    sha256: str | None
    exact_size: bool = True
    archive_dir: str | None = None
    """For a zip: the top-level folder it holds, extracted to DATA_ROOT/archive_dir."""
    hub: bool = False


def _coco(name: str, path: str, size: int, sha256: str, folder: str) -> Remote:
    base = os.environ.get(COCO_URL_ENV, COCO_URL).rstrip("/")
    return Remote(folder, name, f"{base}/{path}/{name}", size, sha256, archive_dir=folder)


def _pope(split: str, size: int, sha256: str) -> Remote:
    base = os.environ.get(POPE_URL_ENV, POPE_URL).rstrip("/")
    name = f"coco_pope_{split}.json"
    return Remote(f"pope_{split}", name, f"{base}/{name}", size, sha256)


def _instruct() -> Remote:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/datasets/{INSTRUCT_REPO}/resolve/{INSTRUCT_REVISION}/{INSTRUCT_FILE}"
    # The hub publishes the file's sha256 (its LFS ETag) and size; both are checked at download time.
    return Remote("instruct", INSTRUCT_FILE, url, 229_000_000, None, exact_size=False, hub=True)


def sources() -> dict[str, Remote]:
    """The source table, with URL bases read from the environment now (mirrors, tests)."""
    # COCO sizes and sha256: tensorflow/datasets url_checksums/coco2014.txt. POPE: the files of
    # RUCAIBox/POPE at commit POPE_COMMIT, hashed from that commit.
    table = [
        _instruct(),
        _coco(
            "annotations_trainval2014.zip", "annotations", 252_872_794,
            "031296bbc80c45a1d1f76bf9a90ead27e94e99ec629208449507a4917a3bf009", "annotations",
        ),
        _coco(
            "val2014.zip", "zips", 6_645_013_297,
            "fe9be816052049c34717e077d9e34aa60814a55679f804cd043e3cbee3b9fde0", "val2014",
        ),
        _coco(
            "train2014.zip", "zips", 13_510_573_713,
            "ede4087e640bddba550e090eae701092534b554b42b05ac33f0300b984b31775", "train2014",
        ),
        _pope("random", 368_166, "ac25245170b975a5bdf9080b23fd431dfe6be458bc038259c1f4f09a6bef7994"),
        _pope("popular", 370_190, "72c1a8ad45d0c13514f5f22598261df41d3b533854d29682e924db50ed8aa753"),
        _pope("adversarial", 370_401, "420b3407db1fa9f1187a805dca41cb7b97fd91504e6c2179706188c107fb8ef8"),
    ]
    return {remote.key: remote for remote in table}


@dataclass(frozen=True)
class Need:
    """A missing input and the remote file that provides it."""

    remote: Remote
    target: Path
    flag: str
    cached: Path | None = None
    """A complete local copy (the hub cache) that only needs to be copied into place."""


@dataclass(frozen=True)
class Fetched:
    """The outcome of `ensure_inputs`: the config with layout paths filled in, and what was fetched."""

    cfg: PrepareConfig
    needs: tuple[Need, ...]
    records: tuple[dict[str, Any], ...]


def human(n: float) -> str:
    """Decimal byte size: 229.0 MB, 6.6 GB."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _size(remote: Remote) -> str:
    return human(remote.size) if remote.exact_size else f"about {human(remote.size)}"


def is_offline(cfg: PrepareConfig) -> bool:
    """Network is off with --offline or HF_HUB_OFFLINE=1 (read now, not at import)."""
    # TRANSFORMERS_OFFLINE counts too: huggingface_hub reads it as HF_HUB_OFFLINE and would refuse the hub file.
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return cfg.offline or flag.strip().upper() in {"1", "ON", "YES", "TRUE"}


_LAYOUT_DEFAULTS = {"instruct": INSTRUCT_FILE, "coco_annotations": "annotations", "coco_images": "val2014"}


def with_data_root(cfg: PrepareConfig) -> PrepareConfig:
    """Move the input paths that are at their default (data/...) under --data-root; other paths stay as given."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    changes = {
        name: Path(cfg.data_root) / relative
        for name, relative in _LAYOUT_DEFAULTS.items()
        if getattr(cfg, name) == defaults[name] and Path(cfg.data_root) / relative != getattr(cfg, name)
    }
    return dataclasses.replace(cfg, **changes) if changes else cfg


def plan(cfg: PrepareConfig) -> tuple[PrepareConfig, list[Need]]:
    """What this run needs that is missing from the layout, and the config pointing at the layout paths."""
    root = Path(cfg.data_root)
    table = sources()
    needs: list[Need] = []
    changes: dict[str, Any] = {}
    if cfg.train:
        if Path(cfg.instruct) == root / INSTRUCT_FILE and not Path(cfg.instruct).is_file():
            needs.append(Need(table["instruct"], root / INSTRUCT_FILE, "--instruct", _hub_cached()))
        if cfg.images is None:
            present = next((d for d in (root / "train2014", root / "train2017") if d.is_dir()), None)
            changes["images"] = present or root / "train2014"
        images = changes.get("images", cfg.images)
        if Path(images) == root / "train2014" and not Path(images).exists():
            needs.append(Need(table["train2014"], root / "train2014", "--images"))
    official = cfg.pope and cfg.pope_from is not None and Path(cfg.pope_from) == OFFICIAL_POPE
    annotations_needed = cfg.chair or (cfg.pope and cfg.pope_from is None)
    if annotations_needed and Path(cfg.coco_annotations) == root / "annotations":
        if not Path(cfg.coco_annotations).exists():
            needs.append(Need(table["annotations"], root / "annotations", "--coco-annotations"))
    images_needed = cfg.chair or (cfg.pope and not is_hub_layout(cfg.pope_from))  # the hub's POPE parquet embeds them
    if images_needed and Path(cfg.coco_images) == root / "val2014" and not Path(cfg.coco_images).exists():
        needs.append(Need(table["val2014"], root / "val2014", "--coco-images"))
    if official:
        changes["pope_from"] = root / "pope"
        for split in ("random", "popular", "adversarial"):
            remote = table[f"pope_{split}"]
            if not (root / "pope" / remote.name).is_file():
                needs.append(Need(remote, root / "pope" / remote.name, "--pope-from"))
    needs.sort(key=lambda need: need.remote.size)  # small files first: a failure shows early
    return (dataclasses.replace(cfg, **changes) if changes else cfg), needs


def missing_message(needs: list[Need], why: str) -> str:
    """One line naming every missing input, its URL and size, and the fixes."""
    items = "; ".join(
        f"{need.target} <- {need.remote.url} ({_size(need.remote)})" for need in needs if need.cached is None
    )
    total = human(sum(need.remote.size for need in needs if need.cached is None))
    flags = ", ".join(dict.fromkeys(need.flag for need in needs))
    return (
        f"{why}: missing {items}; {total} to fetch. Run without --offline and with HF_HUB_OFFLINE unset to fetch "
        f"them, or point {flags} at existing copies."
    )


def ensure_inputs(
    cfg: PrepareConfig,
    reporter: Reporter,
    *,
    confirm: Callable[[str], bool] | None = None,
) -> Fetched:
    """Fetch every missing layout input this run needs (or explain offline what is missing); returns the new config.

    `confirm` is asked before downloading more than CONFIRM_BYTES unless --yes is set; without it the
    download is refused.
    """
    cfg, needs = plan(with_data_root(cfg))
    if not needs:
        return Fetched(cfg, (), ())
    downloads = [need for need in needs if need.cached is None]
    if downloads and is_offline(cfg):
        why = "--offline" if cfg.offline else "offline (HF_HUB_OFFLINE=1)"
        raise DataError(missing_message(downloads, why))
    root = Path(cfg.data_root)
    total = sum(need.remote.size - _downloaded(need, root) for need in downloads)
    if downloads:
        reporter.info(f"Fetching {len(downloads)} file(s), {human(total)} to download, into {root}:")
        for need in downloads:
            have = _downloaded(need, root)
            done = f", {human(have)} already downloaded" if have else ""
            reporter.info(f"  {need.remote.name} ({_size(need.remote)}{done}) from {need.remote.url}")
        _approve(cfg, total, downloads, confirm)
    records = tuple(fetch_one(need, root, reporter) for need in needs)
    return Fetched(cfg, tuple(needs), records)


def _downloaded(need: Need, root: Path) -> int:
    """Bytes of `need` already on disk: a complete archive not yet extracted, or a partial download."""
    if need.remote.hub:
        return 0
    if need.remote.archive_dir is None:
        partial = need.target.with_name(need.target.name + PARTIAL)
    else:
        archive = root / DOWNLOADS / need.remote.name
        if archive.is_file():
            return need.remote.size
        partial = archive.with_name(archive.name + PARTIAL)
    return min(partial.stat().st_size, need.remote.size) if partial.is_file() else 0


def _approve(cfg: PrepareConfig, total: int, needs: list[Need], confirm: Callable[[str], bool] | None) -> None:
    if total <= CONFIRM_BYTES or cfg.yes:
        return
    question = f"Download {human(total)} ({', '.join(n.remote.name for n in needs)}) into {cfg.data_root}?"
    if confirm is None:
        raise ConfigError(
            f"--yes is needed to download {human(total)} ({', '.join(n.remote.name for n in needs)}) without a "
            "terminal to confirm on; pass --yes, or point the input flags at existing copies."
        )
    if not confirm(question):
        raise SeedError(
            "download declined, nothing was fetched; point --instruct, --images, --coco-annotations and "
            "--coco-images at existing copies instead."
        )


def fetch_one(need: Need, root: Path, reporter: Reporter) -> dict[str, Any]:
    """Fetch and verify one input into its layout path; returns what the manifest records about it."""
    remote = need.remote
    record: dict[str, Any] = {"name": remote.name, "url": remote.url, "path": str(need.target)}
    with _locked(root / DOWNLOADS / LOCKS / f"{remote.key}.lock", need.target):
        if need.target.exists():  # another run finished it meanwhile
            return record
        if remote.hub:
            source, meta = (need.cached, {}) if need.cached else _hub_download(remote, reporter)
            record.update(meta)
            _copy_into_place(source, need.target, remote.url)
            return record
        if remote.archive_dir is None:
            digest = download(remote.url, need.target, size=remote.size, sha256=remote.sha256, reporter=reporter)
            record.update(sha256=digest, size=remote.size)
            return record
        archive = root / DOWNLOADS / remote.name
        if not archive.is_file():
            download(remote.url, archive, size=remote.size, sha256=remote.sha256, reporter=reporter)
        extract(archive, remote.archive_dir, need.target, reporter)
        archive.unlink()
    record.update(sha256=remote.sha256, size=remote.size)
    return record


# --- plain HTTP(S) downloads, resumable -------------------------------------------------------------------------


class _Restart(Exception):
    """The server ignored the Range request: start the file again."""


class _Transient(Exception):
    """A dropped connection or a 5xx answer: worth another Range request."""


def download(url: str, dest: Path, *, size: int | None, sha256: str | None, reporter: Reporter) -> str:
    """Download `url` to `dest` through `dest`.partial, resuming it; verify size and sha256; returns the sha256.

    One writer per file: callers hold the item's lock (see fetch_one).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + PARTIAL)
    with open(partial, "ab") as handle:
        while True:
            have = os.fstat(handle.fileno()).st_size
            if size is not None and have > size:
                handle.truncate(0)
                have = 0
            try:
                digest = _transfer(url, handle, partial, have, size, reporter)
                break
            except _Restart:
                handle.truncate(0)
            except OSError as exc:
                raise _disk_error(exc, partial, size, os.fstat(handle.fileno()).st_size) from None
    got = digest.hexdigest()
    actual = partial.stat().st_size
    if size is not None and actual != size:
        partial.unlink()
        raise DataError(f"{url}: got {actual} bytes, expected {size}; the download was deleted, re-run to fetch it.")
    if sha256 is not None and got != sha256:
        partial.unlink()
        raise DataError(
            f"checksum mismatch for {url}: sha256 {got}, expected {sha256}; the download was deleted, re-run to "
            "fetch it again (or check the mirror it came from)."
        )
    os.replace(partial, dest)
    return got


def _transfer(url: str, handle: BinaryIO, partial: Path, have: int, size: int | None, reporter: Reporter) -> Any:
    """Append the rest of `url` from byte `have`, retrying dropped connections; returns the sha256 of the file."""
    digest = _hash_prefix(partial, have)
    if size is not None and have == size:
        return digest  # complete before a kill, not yet verified and renamed
    if size is not None:
        _check_free(partial.parent, size - have, f"downloading {url}")
    label = partial.name.removesuffix(PARTIAL)
    if have:
        reporter.info(f"Resuming {label} at {human(have)} of {human(size) if size else 'unknown size'}.")
        label = f"{label} (from {human(have)})"
    failures = 0
    with reporter.task(label, total=None if size is None else size - have, unit="B") as task:
        while True:
            before = have
            try:
                have = _get(url, handle, digest, have, size, task)
                return digest
            except _Transient as exc:
                have = os.fstat(handle.fileno()).st_size
                failures = 0 if have > before else failures + 1
                if failures > RETRIES:
                    total = human(size) if size else "?"
                    raise DataError(
                        f"download of {url} failed at {human(have)} of {total} ({exc}); re-run the same command to "
                        "resume it, or try again later."
                    ) from None
                time.sleep(RETRY_WAIT_S * failures)


def _get(url: str, handle: BinaryIO, digest: Any, have: int, size: int | None, task: Task) -> int:
    """One GET from byte `have`; appends to `handle`; returns the new byte count."""
    headers = {"User-Agent": f"seedcli/{__version__}", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # our partial is longer than what the server has: start again
            raise _Restart from None
        if exc.code >= 500 or exc.code == 429:
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
        raise DataError(f"{url}: HTTP {exc.code} {exc.reason}; {_http_hint(exc.code)}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (TimeoutError, ConnectionResetError)):
            raise _Transient(str(exc.reason)) from None
        raise DataError(
            f"cannot reach {url} ({exc.reason}); check the network connection, set {COCO_URL_ENV}/{POPE_URL_ENV} "
            "to a mirror, or pass existing copies (--offline lists what is missing)."
        ) from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise _Transient(str(exc) or type(exc).__name__) from None
    with response:
        resumed = response.status == 206 and response.headers.get("Content-Range", "").startswith(f"bytes {have}-")
        if have and not resumed:
            raise _Restart
        length = response.headers.get("Content-Length")
        if size is not None and length is not None and have + int(length) != size:
            raise DataError(
                f"{url}: the server offers {have + int(length)} bytes, expected {size}; the file changed or the "
                "mirror serves another file."
            )
        try:
            while block := response.read(CHUNK):
                handle.write(block)
                digest.update(block)
                have += len(block)
                task.advance(len(block))
        except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            raise _Transient(str(exc) or type(exc).__name__) from None
        finally:
            handle.flush()
    if size is not None and have < size:
        raise _Transient(f"connection closed at {human(have)}")
    return have


def _http_hint(code: int) -> str:
    if code in (401, 403):
        return "the server refused access; check the URL or the mirror setting."
    if code == 404:
        return f"no such file there; check the URL or the mirror setting ({COCO_URL_ENV}, {POPE_URL_ENV})."
    return "the server refused the request; try again later or use a mirror."


def _hash_prefix(path: Path, n: int) -> Any:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        left = n
        while left:
            block = handle.read(min(CHUNK, left))
            if not block:
                break
            digest.update(block)
            left -= len(block)
    return digest


def _check_free(directory: Path, need: int, what: str) -> None:
    free = shutil.disk_usage(directory).free
    if need > free:
        raise StorageError(
            f"not enough disk space for {what}: {human(need)} needed, {human(free)} free under {directory}; free "
            "some space (or pass --data-root on a larger disk) and re-run."
        )


def _disk_error(exc: OSError, path: Path, size: int | None, have: int) -> SeedError:
    """File-system failures are StorageErrors (exit 5), like everywhere else in seedcli."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        more = f" ({human(size - have)} still to write)" if size else ""
        return StorageError(f"disk full while writing {path}{more}; free some space and re-run (it resumes).")
    return StorageError(f"cannot write {path}: {exc.strerror or exc}; fix the directory and re-run.")


@contextlib.contextmanager
def _locked(lock: Path, what: Path) -> Iterator[None]:
    """One process at a time per input: a second one gets an error instead of appending to the same partial.

    The (empty) lock file stays: removing it would let a third process lock a new file while one holds the old.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks, accept the (rare) race
        yield
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"{what} is being fetched by another process; wait for it to finish.") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --- zip extraction, atomic ---------------------------------------------------------------------------------------


def _member_parts(name: str) -> tuple[str, ...]:
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (len(name) > 1 and name[1] == ":"):
        raise DataError(f"archive member {name!r} leaves the extraction directory; the archive is not trustworthy.")
    return pure.parts


def extract(archive: Path, folder: str, target: Path, reporter: Reporter) -> None:
    """Extract `folder`/ of a zip to `target` through a hidden staging directory renamed into place at the end."""
    import zipfile

    target = Path(target)
    for stale in target.parent.glob(f".{target.name}.*.extracting"):
        shutil.rmtree(stale, ignore_errors=True)  # left by a killed run; callers hold the item's lock
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = [info for info in zipped.infolist() if _member_parts(info.filename)[:1] == (folder,)]
            if not members:
                raise DataError(f"{archive} has no {folder}/ folder: not the expected archive; check {COCO_URL_ENV}.")
            total = sum(info.file_size for info in members)
            _check_free(target.parent, total, f"extracting {archive.name}")
            stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".extracting", dir=target.parent))
            try:
                with reporter.task(f"extracting {archive.name}", total=total, unit="B") as task:
                    for info in members:
                        out = stage.joinpath(*_member_parts(info.filename))
                        if info.is_dir():
                            out.mkdir(parents=True, exist_ok=True)
                            continue
                        out.parent.mkdir(parents=True, exist_ok=True)
                        with zipped.open(info) as source, open(out, "wb") as sink:
                            while block := source.read(CHUNK):
                                sink.write(block)
                                task.advance(len(block))
                os.replace(stage / folder, target)
            finally:
                shutil.rmtree(stage, ignore_errors=True)
    except zipfile.BadZipFile as exc:
        archive.unlink()
        raise DataError(f"{archive} is damaged ({exc}); it was deleted, re-run to fetch it again.") from None
    except OSError as exc:
        raise _disk_error(exc, target, None, 0) from None


def _copy_into_place(source: Path, target: Path, url: str) -> None:
    """Copy a complete file to `target` through a hidden partial name and one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}{PARTIAL}")
    try:
        _check_free(target.parent, Path(source).stat().st_size, f"copying {url}")
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise _disk_error(exc, target, None, 0) from None


# --- the hub -----------------------------------------------------------------------------------------------------


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def _hub_cached() -> Path | None:
    """The instruct JSON from the hub cache, if a previous download left it there (no network)."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(INSTRUCT_REPO, INSTRUCT_FILE, revision=INSTRUCT_REVISION, repo_type="dataset")
    return Path(cached) if isinstance(cached, str) else None


def _hub_download(remote: Remote, reporter: Reporter) -> tuple[Path, dict[str, Any]]:
    """hf_hub_download (its cache, token and HF_ENDPOINT apply), then check the hub's published checksum."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    endpoint = _endpoint()
    url = hf_hub_url(INSTRUCT_REPO, INSTRUCT_FILE, repo_type="dataset", revision=INSTRUCT_REVISION, endpoint=endpoint)
    try:
        meta = get_hf_file_metadata(url, endpoint=endpoint)
    except Exception as exc:
        raise _hub_error(exc, url) from None
    if meta.size:
        reporter.info(f"{remote.name}: {human(meta.size)} at commit {meta.commit_hash}.")
        _check_free(Path(_hub_cache_dir()), meta.size, f"downloading {url}")
    try:
        path = Path(
            hf_hub_download(
                INSTRUCT_REPO,
                INSTRUCT_FILE,
                repo_type="dataset",
                revision=INSTRUCT_REVISION,
                endpoint=endpoint,
                tqdm_class=_tqdm_for(reporter, remote.name),  # type: ignore[arg-type]
            )
        )
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_error(exc, Path(_hub_cache_dir()), meta.size, 0) from None
        raise _hub_error(exc, url) from None
    except Exception as exc:
        raise _hub_error(exc, url) from None
    digest = _verify_hub_file(path, meta.etag, meta.size, url)
    return path, {"sha256": digest, "size": path.stat().st_size, "commit": meta.commit_hash}


def _hub_cache_dir() -> str:
    from huggingface_hub import constants

    os.makedirs(constants.HF_HUB_CACHE, exist_ok=True)
    return constants.HF_HUB_CACHE


def _verify_hub_file(path: Path, etag: str | None, size: int | None, url: str) -> str:
    """The hub's ETag is the sha256 for large (LFS) files and the git blob sha1 otherwise: check whichever it is."""
    sha256, sha1 = hashlib.sha256(), hashlib.sha1()
    actual = path.stat().st_size
    sha1.update(f"blob {actual}\0".encode())
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            sha256.update(block)
            sha1.update(block)
    got = sha256.hexdigest()
    etag = (etag or "").lower()
    bad = (size is not None and actual != size) or (
        (re.fullmatch(r"[0-9a-f]{64}", etag) and got != etag)
        or (re.fullmatch(r"[0-9a-f]{40}", etag) and sha1.hexdigest() != etag)
    )
    if bad:
        # Drop the corrupt copy from the hub cache too, or the next run would reuse it.
        blob = path.resolve()
        for stale in {path, blob}:
            with contextlib.suppress(OSError):
                stale.unlink()
        raise DataError(
            f"checksum mismatch for {url}: sha256 {got} ({actual} bytes) does not match the hub's ETag {etag} "
            f"({size} bytes); the download was deleted, re-run to fetch it again (or check HF_ENDPOINT)."
        )
    return got


def _hub_error(exc: Exception, url: str) -> DataError:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return DataError(f"{url}: HTTP {status}; log in with `hf auth login` or set HF_TOKEN, then re-run.")
    if status == 404:
        return DataError(f"{url}: HTTP 404, no such file; check HF_ENDPOINT (a mirror must serve the dataset repo).")
    if status is not None:
        return DataError(f"{url}: HTTP {status}; the hub failed, try again later or set HF_ENDPOINT to a mirror.")
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DataError(
        f"cannot download {url} ({type(exc).__name__}: {reason}); check the network connection or HF_ENDPOINT, "
        "or pass --instruct with an existing copy."
    )


def _tqdm_for(reporter: Reporter, label: str) -> type:
    """A tqdm-shaped class that huggingface_hub can drive, reporting bytes through our Reporter."""

    class _Bar:
        def __init__(self, *args: Any, total: float | None = None, initial: float = 0, **_: Any) -> None:
            self.n, self.total = int(initial), total
            self._stack = contextlib.ExitStack()
            self._task = self._stack.enter_context(reporter.task(label, total=int(total) if total else None, unit="B"))
            if initial:
                self._task.advance(int(initial))

        def update(self, n: float = 1) -> None:
            self.n += int(n)
            self._task.advance(int(n))

        def update_transfer(self, n: float = 1) -> None:
            """Network bytes of a xet download: the bar shows bytes written instead."""

        def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
            """Speed is shown by our own bar."""

        set_transfer_postfix_str = set_postfix_str

        def refresh(self) -> None:
            """Nothing to redraw."""

        def close(self) -> None:
            self._stack.close()

        def __enter__(self) -> _Bar:
            return self

        def __exit__(self, *exc: object) -> None:
            self.close()

    return _Bar


def fetch_summary(fetched: Fetched, resolved: Any) -> dict[str, Any]:
    """What `--fetch-only` prints: every input path of the run and what was fetched."""
    inputs = {name: str(Path(value).resolve()) for name, value in dataclasses.asdict(resolved).items() if value}
    return {"data_root": str(Path(fetched.cfg.data_root).resolve()), "inputs": inputs, "fetched": list(fetched.records)}


