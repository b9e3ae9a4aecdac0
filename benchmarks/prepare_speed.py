"""How fast `seed prepare` converts a LLaVA-Instruct-sized file (existence checks only).

Writes a synthetic llava_instruct_150k-like JSON array (150,000 multi-turn conversations over
81,000 image ids, ids repeated like the real file, about 1.5 KB per record as in the real 230 MB
file) and empty image files named like train2017, then times `seedcli.data.prepare.prepare`
with --no-pope --no-chair and
prints records per second for reading+checking and for the whole command (including writing the
`datasets` train split).

    python benchmarks/prepare_speed.py [--records 150000] [--images 81000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from seedcli.config.prepare import PrepareConfig
from seedcli.data import instruct
from seedcli.data.prepare import prepare
from seedcli.reporting import NullReporter

WORDS = (
    "the a man woman dog cat table street red blue large small holding sitting standing near next to "
    "under with on of in"
).split()


def _sentence(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words)).capitalize() + "."


def write_inputs(root: Path, n_records: int, n_images: int, seed: int = 0) -> tuple[Path, Path]:
    """Write the instruct JSON and an image directory of empty train2017-named files."""
    rng = random.Random(seed)
    images = root / "train2017"
    images.mkdir(parents=True, exist_ok=True)
    ids = rng.sample(range(1, 600_000), n_images)
    for image_id in ids:
        (images / f"{image_id:012d}.jpg").touch()
    path = root / "llava_instruct_150k.json"
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("[")
        for index in range(n_records):
            image_id = ids[index % n_images]
            turns = []
            for turn in range(rng.choice((1, 2, 3, 4, 5))):
                question = _sentence(rng, rng.randint(6, 16)) + "?"
                if turn == 0:
                    question = f"<image>\n{question}" if rng.random() < 0.5 else f"{question}\n<image>"
                turns += [
                    {"from": "human", "value": question},
                    {"from": "gpt", "value": " ".join(_sentence(rng, 12) for _ in range(rng.randint(2, 8)))},
                ]
            record = {"id": f"{image_id:012d}", "image": f"{image_id:012d}.jpg", "conversations": turns}
            handle.write(("," if index else "") + "\n  " + json.dumps(record))
        handle.write("\n]\n")
    return path, images


def main() -> None:
    """Build the inputs, time the conversion, print the rates."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=150_000)
    parser.add_argument("--images", type=int, default=81_000)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="Keep inputs and output here (default: a temp dir, removed)."
    )
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="seed-prepare-bench-"))
    try:
        started = time.perf_counter()
        path, images = write_inputs(workdir, args.records, args.images)
        size_mb = path.stat().st_size / 1e6
        print(
            f"inputs: {args.records} records, {size_mb:.0f} MB, {args.images} image files "
            f"({time.perf_counter() - started:.1f} s to write)"
        )

        started = time.perf_counter()
        scan = instruct.scan_instruct(path, images, reporter=NullReporter())
        scan_s = time.perf_counter() - started
        print(
            f"read + check: {scan.read} records in {scan_s:.2f} s = {scan.read / scan_s:,.0f} records/s "
            f"({size_mb / scan_s:.0f} MB/s), kept {len(scan.records)}"
        )

        cfg = PrepareConfig(instruct=path, images=images, out=workdir / "out", pope=False, chair=False, overwrite=True)
        started = time.perf_counter()
        summary = prepare(cfg, NullReporter())
        total_s = time.perf_counter() - started
        print(
            f"seed prepare (read, check, write train/): {summary['counts']['train']} records in {total_s:.2f} s = "
            f"{summary['counts']['read'] / total_s:,.0f} records/s"
        )
        print(f"cpu: {os.cpu_count()} logical cores visible")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
