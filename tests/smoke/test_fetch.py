"""`seed prepare` fetching its inputs from a loopback HTTP server: the hub path and the plain-URL path.

The server (tests/smoke/fetch_server.py) serves tiny COCO-shaped zips, POPE files and a LLaVA-Instruct
JSON made here; the source table's URLs point at it through SEEDCLI_COCO_URL, SEEDCLI_POPE_URL and
HF_ENDPOINT, and its sizes and checksums are replaced by those of the fixtures. No real network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from seedcli.config.prepare import PrepareConfig
from seedcli.data import fetch
from seedcli.data.datadir import CHAIR_FILE, POPE_SPLITS, open_data_dir, pope_file
from seedcli.errors import ConfigError, DataError, SeedError, StorageError
from seedcli.reporting import NullReporter
from tests.smoke.fetch_server import LoopbackServer, Served

pytestmark = pytest.mark.smoke

NAMES = ["person", "dog", "cat", "car", "bus", "kite", "cup", "chair"]
TRAIN_IDS = list(range(1, 9))
VAL_IDS = list(range(101, 111))
HUB_PATH = f"/hub/datasets/{fetch.INSTRUCT_REPO}/resolve/main/{fetch.INSTRUCT_FILE}"
ZIPS = {
    "annotations": "/coco/annotations/annotations_trainval2014.zip",
    "val2014": "/coco/zips/val2014.zip",
    "train2014": "/coco/zips/train2014.zip",
}


def _jpeg(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, 40, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zipped:
        for name, data in members.items():
            zipped.writestr(name, data)
    return buffer.getvalue()


def _world() -> dict[str, dict[str, bytes]]:
    """The files of a tiny COCO 2014 + LLaVA-Instruct + POPE world, by archive."""
    images, annotations, captions, val = [], [], [], {}
    for k, image_id in enumerate(VAL_IDS):
        name = f"COCO_val2014_{image_id:012d}.jpg"
        images.append({"id": image_id, "file_name": name})
        val[f"val2014/{name}"] = _jpeg(k)
        chosen = list(dict.fromkeys(NAMES[(k + j * (1 + k % 3)) % len(NAMES)] for j in range(3 + k % 2)))
        for j, category in enumerate(chosen):
            category_id = NAMES.index(category) + 1
            annotations.append({"id": 10 * image_id + j, "image_id": image_id, "category_id": category_id})
        captions.append({"id": image_id, "image_id": image_id, "caption": f"A {chosen[0]} next to a {chosen[1]}."})
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(NAMES)]
    instances = {"images": images, "annotations": annotations, "categories": categories}
    annotation_files = {
        "annotations/instances_val2014.json": json.dumps(instances).encode(),
        "annotations/captions_val2014.json": json.dumps({"annotations": captions}).encode(),
    }
    train, records = {}, []
    for image_id in TRAIN_IDS + VAL_IDS:
        train[f"train2014/COCO_train2014_{image_id:012d}.jpg"] = _jpeg(image_id)
        turns = [{"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": f"Image {image_id}."}]
        # train2017 spelling, as in llava_instruct_150k.json: the converter finds the train2014 name.
        records.append({"id": f"{image_id:012d}", "image": f"{image_id:012d}.jpg", "conversations": turns})
    pope = {}
    for split_index, split in enumerate(POPE_SPLITS):
        rows, qid = [], 1
        for k, image_id in enumerate(VAL_IDS[:4]):
            for j in range(3):
                name = f"COCO_val2014_{image_id:012d}.jpg"
                for label, obj in (("yes", NAMES[(k + j) % 8]), ("no", NAMES[(k + j + 3 + split_index) % 8])):
                    text = f"Is there a {obj} in the image?"
                    rows.append({"question_id": qid, "image": name, "text": text, "label": label})
                    qid += 1
        pope[f"coco_pope_{split}.json"] = "".join(json.dumps(r) + "\n" for r in rows).encode()
    return {
        "annotations": annotation_files,
        "val2014": val,
        "train2014": train,
        "instruct": {fetch.INSTRUCT_FILE: json.dumps(records, indent=1).encode()},
        "pope": pope,
    }


@dataclasses.dataclass
class Setup:
    served: Served
    world: dict[str, dict[str, bytes]]
    local: Path
    """The same world unpacked, for the run on local copies."""
    root: Path
    hf_cache: Path


@pytest.fixture()
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    """Serve the world on 127.0.0.1 and point the source table, HF_ENDPOINT and the hub cache at it."""
    from huggingface_hub import constants

    world = _world()
    served = Served()
    for key, path in ZIPS.items():
        served.files[path] = _zip(world[key])
    for name, data in world["pope"].items():
        served.files[f"/pope/{name}"] = data
    served.files[HUB_PATH] = world["instruct"][fetch.INSTRUCT_FILE]
    served.hub.add(HUB_PATH)

    local = tmp_path / "local"
    for files in world.values():
        for name, data in files.items():
            target = local / name if "/" in name else local / ("pope" if name.startswith("coco_pope") else "") / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    original = fetch.sources

    def table() -> dict[str, fetch.Remote]:
        files = {
            "instruct": served.files[HUB_PATH],
            **{key: served.files[path] for key, path in ZIPS.items()},
            **{f"pope_{s}": served.files[f"/pope/coco_pope_{s}.json"] for s in POPE_SPLITS},
        }
        return {
            key: dataclasses.replace(
                remote,
                size=len(files[key]),
                sha256=None if remote.hub else hashlib.sha256(files[key]).hexdigest(),
            )
            for key, remote in original().items()
        }

    hf_cache = tmp_path / "hf-cache"
    with LoopbackServer(served) as base:
        monkeypatch.setenv(fetch.COCO_URL_ENV, f"{base}/coco")
        monkeypatch.setenv(fetch.POPE_URL_ENV, f"{base}/pope")
        monkeypatch.setenv("HF_ENDPOINT", f"{base}/hub")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_cache))
        monkeypatch.setattr(fetch, "sources", table)
        monkeypatch.setattr(fetch, "RETRY_WAIT_S", 0.0)
        yield Setup(served, world, local, tmp_path / "data", hf_cache)


def _args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", "--data-root", str(root), "--out", str(out), "--pope-images", "6", "--chair-images", "5", *extra]


def _local_args(local: Path, out: Path, *extra: str) -> list[str]:
    return [
        "prepare",
        "--instruct", str(local / fetch.INSTRUCT_FILE),
        "--images", str(local / "train2014"),
        "--coco-annotations", str(local / "annotations"),
        "--coco-images", str(local / "val2014"),
        "--out", str(out),
        "--pope-images", "6",
        "--chair-images", "5",
        *extra,
    ]


def _same_data(a: Path, b: Path) -> None:
    """Two data directories hold the same records, POPE and CHAIR files and counts (roots may differ)."""
    first, second = open_data_dir(a), open_data_dir(b)
    assert list(first.iter_train()) == list(second.iter_train())
    for split in POPE_SPLITS:
        assert (a / pope_file(split)).read_bytes() == (b / pope_file(split)).read_bytes()
    if (a / CHAIR_FILE).exists() or (b / CHAIR_FILE).exists():
        assert (a / CHAIR_FILE).read_bytes() == (b / CHAIR_FILE).read_bytes()
    assert first.manifest["counts"] == second.manifest["counts"]
    assert first.manifest["dropped"] == second.manifest["dropped"]


def test_full_fetch_ends_in_the_same_data_directory_as_local_copies(setup: Setup, tmp_path: Path, cli) -> None:
    fetched_out = tmp_path / "fetched"
    code, stdout, stderr = cli(_args(setup.root, fetched_out, "--yes"))
    assert code == 0, stderr
    assert stdout.strip().splitlines()[-1] == str(fetched_out.resolve())
    for name in ("llava_instruct_150k.json", "annotations_trainval2014.zip", "val2014.zip", "train2014.zip"):
        assert name in stderr  # announced with its size and URL before starting
    layout = ["annotations", "downloads", fetch.INSTRUCT_FILE, "train2014", "val2014"]
    assert sorted(p.name for p in setup.root.iterdir()) == layout
    assert [p.name for p in (setup.root / "downloads").iterdir()] == [".locks"]  # archives go once extracted
    assert (setup.root / "val2014" / f"COCO_val2014_{VAL_IDS[0]:012d}.jpg").read_bytes() == setup.world["val2014"][
        f"val2014/COCO_val2014_{VAL_IDS[0]:012d}.jpg"
    ]
    # The hub path went through huggingface_hub: HEAD for the metadata, then GET, and its cache holds the file.
    assert setup.served.requests(HUB_PATH, "HEAD") and setup.served.requests(HUB_PATH, "GET") == [None]
    assert list(setup.hf_cache.glob("datasets--liuhaotian--LLaVA-Instruct-150K/snapshots/*/llava_instruct_150k.json"))
    manifest = open_data_dir(fetched_out).manifest
    assert {item["name"] for item in manifest["source"]["fetched"]} >= {"val2014.zip", fetch.INSTRUCT_FILE}

    local_out = tmp_path / "from-local"
    code, _, stderr = cli(_local_args(setup.local, local_out))
    assert code == 0, stderr
    _same_data(fetched_out, local_out)

    # Everything is in place now: offline, the same command needs no network and gives the same directory.
    before = len(setup.served.log)
    offline_out = tmp_path / "offline"
    code, _, stderr = cli(_args(setup.root, offline_out, "--offline"))
    assert code == 0, stderr
    assert len(setup.served.log) == before
    _same_data(fetched_out, offline_out)


def test_offline_names_every_missing_file_and_url(setup: Setup, tmp_path: Path, cli, monkeypatch) -> None:
    code, stdout, stderr = cli(_args(setup.root, tmp_path / "out", "--offline", "--max-samples", "50000"))
    assert code == 3 and stdout == ""
    assert len(stderr.strip().splitlines()) == 1
    for path in (*ZIPS.values(), HUB_PATH):
        assert path in stderr
    for target in ("annotations", "val2014", "train2014", fetch.INSTRUCT_FILE):
        assert str(setup.root / target) in stderr
    assert not setup.served.log and not setup.root.exists() and not (tmp_path / "out").exists()

    # HF_HUB_OFFLINE=1 means offline too; only the missing parts of this run are listed.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, stderr = cli(_args(setup.root, tmp_path / "out", "--no-train", "--pope-from", "official", "--no-chair"))
    assert code == 3 and "HF_HUB_OFFLINE" in stderr
    assert "coco_pope_adversarial.json" in stderr and ZIPS["val2014"] in stderr
    assert ZIPS["train2014"] not in stderr and HUB_PATH not in stderr and ZIPS["annotations"] not in stderr
    assert not setup.served.log


class _InterruptAfter(NullReporter):
    """A reporter whose byte task raises KeyboardInterrupt after `n` bytes of `name`: Ctrl-C mid-download."""

    def __init__(self, name: str, n: int) -> None:
        self.name, self.n = name, n

    @contextlib.contextmanager
    def task(self, description: str, total: int | None, unit: str = "it") -> Iterator[Any]:
        done = [0]

        class _Task:
            def advance(inner, n: int = 1, **fields: Any) -> None:  # noqa: N805
                done[0] += n
                if description.startswith(self.name) and done[0] >= self.n:
                    raise KeyboardInterrupt

        yield _Task()


def test_killed_download_resumes_with_a_range_request(setup: Setup, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fetch, "CHUNK", 1024)
    cfg = PrepareConfig(data_root=setup.root, out=tmp_path / "out", train=False, pope_images=6, chair_images=5)
    with pytest.raises(KeyboardInterrupt):
        fetch.ensure_inputs(cfg, _InterruptAfter("val2014.zip", 2048))
    partial = setup.root / "downloads" / "val2014.zip.partial"
    assert partial.stat().st_size == 2048
    assert not (setup.root / "val2014").exists() and not (setup.root / "downloads" / "val2014.zip").exists()
    # A partial file is never taken as complete: offline, val2014 is still missing.
    with pytest.raises(DataError, match="val2014.zip"):
        fetch.ensure_inputs(dataclasses.replace(cfg, offline=True), NullReporter())

    fetch.ensure_inputs(cfg, NullReporter())
    assert setup.served.requests(ZIPS["val2014"]) == [None, "bytes=2048-"]
    assert not partial.exists() and len(list((setup.root / "val2014").iterdir())) == len(VAL_IDS)
    assert len(setup.served.requests(ZIPS["annotations"])) == 1  # finished before the kill, not fetched again


def test_dropped_connection_is_resumed_within_the_run(setup: Setup, tmp_path: Path) -> None:
    body = setup.served.files[ZIPS["annotations"]]
    setup.served.cut[ZIPS["annotations"]] = 100
    cfg = PrepareConfig(data_root=setup.root, out=tmp_path / "out", train=False, pope=False)
    fetch.ensure_inputs(cfg, NullReporter())
    assert setup.served.requests(ZIPS["annotations"]) == [None, "bytes=100-"]
    assert (setup.root / "annotations" / "captions_val2014.json").read_bytes() == setup.world["annotations"][
        "annotations/captions_val2014.json"
    ]
    assert len(body) > 100


def test_a_server_ignoring_range_restarts_the_file(setup: Setup, tmp_path: Path) -> None:
    body = setup.served.files[ZIPS["val2014"]]
    (setup.root / "downloads").mkdir(parents=True)
    (setup.root / "downloads" / "val2014.zip.partial").write_bytes(body[:100])
    setup.served.no_range.add(ZIPS["val2014"])
    cfg = PrepareConfig(data_root=setup.root, out=tmp_path / "o", train=False, chair=False, pope_from=Path("official"))
    fetch.ensure_inputs(cfg, NullReporter())
    assert setup.served.requests(ZIPS["val2014"]) == ["bytes=100-", None]
    assert len(list((setup.root / "val2014").iterdir())) == len(VAL_IDS)


def test_hub_download_resumes_after_a_dropped_connection(setup: Setup, tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import constants

    # huggingface_hub resumes from the last chunk it wrote (10 MB by default): use 1 kB chunks for a 4 kB file.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1024)
    body = setup.served.files[HUB_PATH]
    assert len(body) > 3000
    setup.served.cut[HUB_PATH] = 2500
    cfg = PrepareConfig(
        data_root=setup.root, out=tmp_path / "out", images=setup.local / "train2014", pope=False, chair=False
    )
    fetch.ensure_inputs(cfg, NullReporter())
    assert setup.served.requests(HUB_PATH) == [None, "bytes=2048-"]
    assert (setup.root / fetch.INSTRUCT_FILE).read_bytes() == body

    # Offline, a copy in the hub cache is enough: copied into the layout without any request.
    (setup.root / fetch.INSTRUCT_FILE).unlink()
    before = len(setup.served.log)
    fetch.ensure_inputs(dataclasses.replace(cfg, offline=True), NullReporter())
    assert (setup.root / fetch.INSTRUCT_FILE).read_bytes() == body and len(setup.served.log) == before


def test_corrupted_files_are_refused_by_their_checksum(setup: Setup, tmp_path: Path) -> None:
    setup.served.corrupt.update({ZIPS["annotations"], HUB_PATH})
    cfg = PrepareConfig(data_root=setup.root, out=tmp_path / "out", train=False, pope=False)
    with pytest.raises(DataError, match="checksum mismatch for http://127.0.0.1:[0-9]+/coco/annotations/"):
        fetch.ensure_inputs(cfg, NullReporter())
    assert not (setup.root / "annotations").exists()
    assert [p.name for p in (setup.root / "downloads").iterdir()] == [".locks"]  # no partial, no archive

    hub_cfg = PrepareConfig(data_root=setup.root, images=setup.local / "train2014", pope=False, chair=False)
    with pytest.raises(DataError, match=f"checksum mismatch for .*{HUB_PATH}.*hub's ETag"):
        fetch.ensure_inputs(hub_cfg, NullReporter())
    assert not (setup.root / fetch.INSTRUCT_FILE).exists()
    assert fetch._hub_cached() is None  # the corrupt copy left the hub cache too

    setup.served.corrupt.clear()
    fetch.ensure_inputs(hub_cfg, NullReporter())
    fetch.ensure_inputs(cfg, NullReporter())
    assert (setup.root / fetch.INSTRUCT_FILE).read_bytes() == setup.served.files[HUB_PATH]
    assert (setup.root / "annotations" / "instances_val2014.json").is_file()


@pytest.mark.parametrize("code", [500, 404])
@pytest.mark.parametrize("path", [ZIPS["val2014"], HUB_PATH])
def test_server_errors_name_the_url(setup: Setup, tmp_path: Path, cli, path: str, code: int) -> None:
    setup.served.status[path] = code
    hub_only = ["--no-pope", "--no-chair", "--images", str(setup.local / "train2014")]
    extra = hub_only if path == HUB_PATH else ["--no-train"]
    exit_code, _, stderr = cli(_args(setup.root, tmp_path / "out", *extra))
    last = stderr.strip().splitlines()[-1]
    assert exit_code == 3 and last.startswith("error:") and path in last and f"HTTP {code}" in last
    assert not (tmp_path / "out").exists()
    target = "val2014" if path != HUB_PATH else fetch.INSTRUCT_FILE
    assert not (setup.root / target).exists()


def test_no_network_is_one_line_naming_the_url(setup: Setup, tmp_path: Path, monkeypatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    monkeypatch.setenv(fetch.COCO_URL_ENV, f"http://127.0.0.1:{closed}/coco")
    cfg = PrepareConfig(data_root=setup.root, out=tmp_path / "out", train=False, pope=False)
    with pytest.raises(DataError, match=f"cannot reach http://127.0.0.1:{closed}/coco/annotations/.*network"):
        fetch.ensure_inputs(cfg, NullReporter())


def test_full_disk_is_reported_and_leaves_nothing_complete(setup: Setup, tmp_path: Path, monkeypatch) -> None:
    cfg = PrepareConfig(data_root=setup.root, out=tmp_path / "out", train=False, pope=False)
    usage = fetch.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(fetch.shutil, "disk_usage", lambda path: usage._replace(free=10))
    with pytest.raises(StorageError, match="not enough disk space for downloading http://127.0.0.1"):
        fetch.ensure_inputs(cfg, NullReporter())
    assert not (setup.root / "annotations").exists() and not (setup.root / "downloads" / "val2014.zip").exists()


@contextlib.contextmanager
def _disk_full_writing(marker: str) -> Iterator[None]:
    """Writes to files whose path contains `marker` fail with ENOSPC after 1 kB in all (fetch's `open` is replaced)."""
    real_open = open
    written = [0]

    class _Filling:
        def __init__(self, handle: Any) -> None:
            self.handle = handle

        def write(self, data: bytes) -> int:
            if written[0] + len(data) > 1024:
                raise OSError(errno.ENOSPC, "No space left on device")
            written[0] += len(data)
            return self.handle.write(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.handle, name)

        def __enter__(self) -> _Filling:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

    def full_disk(path, mode="r", *args, **kwargs):  # noqa: ANN001, ANN202
        handle = real_open(path, mode, *args, **kwargs)
        return _Filling(handle) if marker in str(path) and ("w" in mode or "a" in mode) else handle

    fetch.open = full_disk  # type: ignore[attr-defined]
    try:
        yield
    finally:
        del fetch.open  # type: ignore[attr-defined]


def test_disk_full_while_downloading_keeps_a_resumable_partial(setup: Setup, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fetch, "CHUNK", 512)
    cfg = PrepareConfig(data_root=setup.root, out=tmp_path / "out", train=False, pope=False)
    with _disk_full_writing("/val2014.zip.partial"), pytest.raises(StorageError, match="disk full while writing"):
        fetch.ensure_inputs(cfg, NullReporter())
    partial = setup.root / "downloads" / "val2014.zip.partial"
    assert partial.stat().st_size == 1024 and not (setup.root / "val2014").exists()
    fetch.ensure_inputs(cfg, NullReporter())  # space freed: it resumes
    assert setup.served.requests(ZIPS["val2014"]) == [None, "bytes=1024-"]
    assert len(list((setup.root / "val2014").iterdir())) == len(VAL_IDS)


def test_disk_full_while_extracting_keeps_the_archive_and_no_half_directory(setup: Setup, tmp_path: Path) -> None:
    archive = tmp_path / "val2014.zip"
    archive.write_bytes(setup.served.files[ZIPS["val2014"]])
    target = tmp_path / "data" / "val2014"
    target.parent.mkdir()
    with _disk_full_writing(".extracting"), pytest.raises(StorageError, match="disk full while writing"):
        fetch.extract(archive, "val2014", target, NullReporter())
    assert not target.exists() and archive.is_file()
    assert not list(target.parent.iterdir())  # the staging directory is gone
    fetch.extract(archive, "val2014", target, NullReporter())
    assert len(list(target.iterdir())) == len(VAL_IDS)


def test_large_downloads_need_yes_or_a_confirmation(tmp_path: Path, monkeypatch, cli) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv(fetch.COCO_URL_ENV, "http://127.0.0.1:9/never-contacted")
    cfg = PrepareConfig(data_root=tmp_path / "data", out=tmp_path / "out", train=False)
    with pytest.raises(ConfigError, match="--yes"):
        fetch.ensure_inputs(cfg, NullReporter())
    asked: list[str] = []
    with pytest.raises(SeedError, match="declined"):
        fetch.ensure_inputs(cfg, NullReporter(), confirm=lambda q: asked.append(q) or False)
    assert "6.9 GB" in asked[0] and "val2014.zip" in asked[0]
    assert not (tmp_path / "data").exists()
    # Through the CLI without a terminal: one line, exit 2.
    code, _, stderr = cli(["prepare", "--data-root", str(tmp_path / "data"), "--no-train"])
    last = stderr.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: --yes") and "6.9 GB" in last


def test_fetch_only_fetches_and_verifies_without_converting(setup: Setup, tmp_path: Path, cli) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = cli(_args(setup.root, out, "--fetch-only", "--pope-from", "official", "--no-train", "--yes"))
    assert code == 0, stderr
    assert stdout.strip().splitlines()[-1] == str(setup.root.resolve())
    assert not out.exists()
    for split in POPE_SPLITS:
        name = f"coco_pope_{split}.json"
        assert (setup.root / "pope" / name).read_bytes() == setup.world["pope"][name]
    code, stdout, _ = cli(_args(setup.root, out, "--fetch-only", "--pope-from", "official", "--no-train", "--json"))
    summary = json.loads(stdout)
    assert summary["fetched"] == [] and summary["inputs"]["pope_from"] == str((setup.root / "pope").resolve())
