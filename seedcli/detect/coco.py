"""Track 1 items from `seed evaluate --chair` captions: object options labelled by the CHAIR ground truth.

Each CHAIR row of samples.jsonl holds a generated caption, its image and the image's ground-truth
COCO categories. Every distinct object mention of the caption (CHAIR's own synonym matching)
becomes an `object` option whose text is the matched term; it is hallucinated when its category is
not in the ground truth. Mentions whose term does not appear verbatim in the caption (a plural or
merged form the matcher normalised) are left out, and captions without any option are skipped; both
are counted.
"""

from __future__ import annotations

import json
from pathlib import Path

from seedcli.detect.items import Item, Option
from seedcli.detect.prompts import IDENTIFIER_SETS
from seedcli.errors import DataError


def items_from_chair_samples(
    samples: Path, data_dir: Path, *, model: str | None = None
) -> tuple[list[Item], dict[str, int]]:
    """Items from the CHAIR rows of a samples.jsonl (optionally one model's), and counts of what was skipped."""
    from seedcli.data.datadir import open_data_dir
    from seedcli.evals.chair import caption_objects

    data = open_data_dir(data_dir)
    if not Path(samples).is_file():
        raise DataError(f"--input {samples}: no such file (a samples.jsonl written by `seed evaluate --chair`).")
    items: list[Item] = []
    counts = {"captions": 0, "no_option": 0, "mention_not_verbatim": 0}
    limit = len(IDENTIFIER_SETS[0])
    for number, line in enumerate(Path(samples).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{samples}:{number}: invalid JSON.") from None
        if row.get("benchmark") != "chair" or (model is not None and row.get("model") != model):
            continue
        caption, truth = row.get("output") or "", set(row.get("label") or [])
        counts["captions"] += 1
        options: list[Option] = []
        labels: list[str] = []
        seen: set[str] = set()
        for term, category in caption_objects(caption):
            if term in seen:
                continue
            seen.add(term)
            if term.lower() not in caption.lower():
                counts["mention_not_verbatim"] += 1
                continue
            if len(options) == limit:
                break
            option_id = IDENTIFIER_SETS[0][len(options)]
            options.append(Option(option_id, term, "object"))
            if category not in truth:
                labels.append(option_id)
        if not options:
            counts["no_option"] += 1
            continue
        image = data.resolve_image("chair", str(row["image"]))
        item_id = f"{row.get('model', 'model')}-{row.get('seed')}-{row['id']}"
        items.append(Item(item_id, image, 1, caption, None, tuple(options), tuple(labels)))
    if not items:
        raise DataError(
            f"--input {samples}: no CHAIR caption with an object mention (rows read: {counts['captions']})."
        )
    return items, counts
