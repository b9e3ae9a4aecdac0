"""`seed prepare --filter-with RUN`: drop the training conversations whose answers a detector flags.

Every non-empty assistant answer of the selected conversations is read into a Track 1 item
(objects, attributes and relations, `seedcli.detect.extract`) over the conversation's image; the
detector flags its options as `seed detect run` would. A conversation with at least one flagged
option in any of its answers is dropped whole: later turns can lean on earlier answers, and the
image belongs to the first turn, so cutting single turns out would leave conversations that refer
to what was removed. Answers without any option ("Yes.", "There are two objects.") are counted
and never flag their conversation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from seedcli.data.datadir import Record
from seedcli.detect.screen import Detector
from seedcli.reporting import Reporter

FLAGGED_FILE = "filtered.jsonl"
"""One line per dropped conversation (id, image, the flagged answers and options), beside manifest.json."""
BATCH_SIZE = 64
DROP_REASON = "detector_flagged"


def filter_records(
    records: list[Record], images: Path, detector: Detector, reporter: Reporter
) -> tuple[list[Record], list[dict[str, Any]], dict[str, Any]]:
    """(kept records, one row per dropped conversation, the report for the manifest and the summary)."""
    from seedcli.detect.screen import load_detector, rates, screen

    texts: list[tuple[str, Path]] = []
    owners: list[tuple[int, int]] = []  # (record index, message index) of each answer
    for r, record in enumerate(records):
        for m, message in enumerate(record.messages):
            if message["role"] == "assistant" and message["content"].strip():
                texts.append((message["content"], images / record.image))
                owners.append((r, m))
    loaded = load_detector(detector, dtype="auto", device="auto")
    results = screen(detector, loaded, texts, batch_size=BATCH_SIZE, reporter=reporter)
    del loaded
    flagged: dict[int, list[dict[str, Any]]] = {}
    for (r, m), (text, _), result in zip(owners, texts, results):
        if result["hallucinated"]:
            options = [o["text"] for o in result["options"] if o["hallucinated"]]
            flagged.setdefault(r, []).append({"turn": m, "text": text, "flagged": options})
    kept = [record for r, record in enumerate(records) if r not in flagged]
    dropped = [{"id": records[r].id, "image": records[r].image, "answers": answers} for r, answers in flagged.items()]
    stats = rates(results)
    report = {
        **detector.describe(),
        "conversations": len(records),
        "conversations_dropped": len(dropped),
        "answers": len(texts),
        "answers_no_options": stats["n_no_options"],
        "answers_flagged": stats["n_flagged_captions"],
        "options": stats["n_options"],
        "options_flagged": stats["n_flagged"],
        "options_truncated": stats["n_truncated_options"],
        "kinds": stats["kinds"],
    }
    return kept, dropped, report
