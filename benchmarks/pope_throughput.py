"""POPE questions/s: `seed evaluate`'s paths, prefix-shared and not, against a naive one-question loop.

Same model, same questions, in one run. Per image, POPE's "Is there a/an X in the image?" with LLaVA's
suffix: `--pope random` asks 6 questions (3 objects present, 3 absent); `--pope all` asks them as POPE's
three splits do: the same 3 positive questions in every split and 3 negatives per split (18 questions,
12 distinct). Paths:
- naive generate: `model.generate(max_new_tokens, greedy)` for one question at a time;
- today's batched generate: `seedcli.evals.generation.generate` (left padding, KV cache), one call per
  split, as `seed evaluate` ran it before prefix sharing and runs it with `--no-share-prefix`;
- prefix-shared generate: `generate(..., share_prefix=True)` over all splits at once, as `seed evaluate`
  runs POPE by default: each distinct (image, question) once, one prefilled prefix and one processor call
  per image;
- naive logits: one unbatched forward per question, yes/no decision from the next-token logits;
- batched and prefix-shared logits: `seedcli.evals.pope_logits.score_logits` (`--pope-scoring logits`).
Every answer of a batched path is compared with the naive answer (on the naive loop's questions), and
every prefix-shared answer with today's batched answer (all questions); any difference is printed and
makes the exit code 1. For logits, the largest |yes/no score difference| is printed as well.

    python benchmarks/pope_throughput.py --shape tiny-llava --images 8 --batch-sizes 1,8,24
    python benchmarks/pope_throughput.py --shape small-llava --pope all --images 4 --naive-images 0 \\
        --batch-sizes 8,18 --threads 1
    python benchmarks/pope_throughput.py --shape llava-7b --pope all --images 100 --batch-sizes 16,64 --naive-images 10

--naive-images limits the naive loops to the first N images (they are slow; 0 skips them); their rate is
measured on those and the answers compared on those.
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import shapes  # noqa: E402

from seedcli.evals.generation import (  # noqa: E402
    Decoding,
    encode_all,
    eos_ids,
    generate,
    model_device_dtype,
    pad_id,
    to_batch,
)
from seedcli.evals.pope_logits import answer_tokens, score_logits, yes_no_scores  # noqa: E402
from seedcli.evals.prompts import LLAVA_POPE_SUFFIX, pope_prompt  # noqa: E402
from seedcli.models import loading  # noqa: E402

OBJECTS_PER_IMAGE = 3
SPLITS = {"random": ("random",), "all": ("random", "popular", "adversarial")}


def _question(word: str) -> str:
    article = "an" if word[0] in "aeiou" else "a"
    return pope_prompt(f"Is there {article} {word} in the image?", LLAVA_POPE_SUFFIX)


def questions(
    shape: shapes.Shape, processor: Any, images: int, pope: str = "random", seed: int = 0
) -> dict[str, tuple[list[str], list[Any]]]:
    """Per split: (prompts, images) of plain-colour images, 3 positive and 3 negative questions per image.

    The positive objects of an image are the same in every split (as in POPE); each split draws its own
    negatives. Questions alternate positive, negative, image by image, like POPE's files.
    """
    from PIL import Image

    rng = random.Random(seed)
    words = list(shapes.vocabulary_words(shape, processor))
    out: dict[str, tuple[list[str], list[Any]]] = {split: ([], []) for split in SPLITS[pope]}
    for _ in range(images):
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        image = Image.new("RGB", (shape.image_size, shape.image_size), colour)
        present = rng.sample(words, OBJECTS_PER_IMAGE)
        for split in SPLITS[pope]:
            absent = rng.sample([w for w in words if w not in present], OBJECTS_PER_IMAGE)
            prompts, pictures = out[split]
            for yes, no in zip(present, absent):
                prompts += [_question(yes), _question(no)]
                pictures += [image, image]
    return out


def naive_generate(
    model: Any, processor: Any, family: Any, prompts: list[str], images: list[Any], max_new_tokens: int
) -> list[str]:
    """One `model.generate` call per question (greedy), answers cut at the first end-of-sequence id."""
    device, dtype = model_device_dtype(model)
    pad = pad_id(processor)
    stop = eos_ids(model, processor)
    out = []
    with torch.inference_mode():
        for prompt, image in zip(prompts, images):
            inputs = to_batch(encode_all(processor, family, [prompt], [image]), pad=pad, device=device, dtype=dtype)
            new = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
            ids = new[0, inputs["input_ids"].shape[1] :].tolist()
            end = next((i for i, t in enumerate(ids) if t in stop), len(ids))
            out.append(processor.tokenizer.decode(ids[:end], skip_special_tokens=True).strip())
    return out


def naive_logits(
    model: Any, processor: Any, family: Any, prompts: list[str], images: list[Any], tokens: Any
) -> list[str]:
    """One unbatched forward per question; yes/no from the last position's logits."""
    device, dtype = model_device_dtype(model)
    pad = pad_id(processor)
    out = []
    with torch.inference_mode():
        for prompt, image in zip(prompts, images):
            inputs = to_batch(encode_all(processor, family, [prompt], [image]), pad=pad, device=device, dtype=dtype)
            logits = model(**inputs, logits_to_keep=1).logits[:, -1, :]
            out.append(yes_no_scores(logits, tokens)[0]["answer"])
    return out


def timed(fn: Any, sync: bool) -> tuple[Any, float]:
    """(result, seconds): wall seconds on GPU; this process's CPU seconds on CPU (wall time there counts other jobs)."""
    clock = time.perf_counter if sync else time.process_time
    if sync:
        torch.cuda.synchronize()
    started = clock()
    result = fn()
    if sync:
        torch.cuda.synchronize()
    return result, clock() - started


def main() -> int:
    """Run the naive, batched and prefix-shared paths, check answers, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(shapes.SHAPES), default="tiny-llava")
    parser.add_argument(
        "--pope", choices=sorted(SPLITS), default="random", help="One split (6 questions per image) or all three (18)."
    )
    parser.add_argument("--images", type=int, default=8, help="Images for the batched paths.")
    parser.add_argument(
        "--naive-images", type=int, default=None, help="Images for the naive loops (default: all; 0: skip them)."
    )
    parser.add_argument("--batch-sizes", default="1,8,24")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (CPU runs: 1 makes CPU time = compute)."
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = loading.resolve_device(args.device)
    sync = device == "cuda"
    loaded = shapes.loaded(shapes.SHAPES[args.shape], args.dtype, device)
    model, processor, family = loaded.model, loaded.processor, loaded.family
    shape = shapes.SHAPES[args.shape]
    splits = questions(shape, processor, args.images, args.pope)
    prompts = [p for ps, _ in splits.values() for p in ps]
    images = [i for _, im in splits.values() for i in im]
    per_image = len(prompts) // args.images
    naive_images = args.images if args.naive_images is None else args.naive_images
    first = next(iter(splits.values()))  # the naive loops ask the first split's questions of the first images
    n_naive = min(len(first[0]), 2 * OBJECTS_PER_IMAGE * naive_images)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    decoding = Decoding(mode="greedy", max_new_tokens=args.max_new_tokens)
    tokens = answer_tokens(processor.tokenizer)
    distinct = len({(id(i), p) for p, i in zip(prompts, images)})
    print("command: " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    where = torch.cuda.get_device_name() if sync else "cpu"
    print(f"device: {where} ({torch.get_num_threads()} threads), torch {torch.__version__}, weights {loaded.dtype}")
    print(
        f"--pope {args.pope}: {len(prompts)} questions ({args.images} images x {per_image}, {distinct} distinct), "
        f"naive loops on {n_naive}, max_new_tokens {args.max_new_tokens}"
    )

    # Warm-up (kernel selection, allocator) on two questions, untimed.
    generate(model, processor, family, prompts[:2], images[:2], decoding, batch_size=2, share_prefix=True)

    def today(fn: Any, size: int) -> list[Any]:
        """A batched path as `seed evaluate` ran it before prefix sharing: one call per split."""
        return [a for ps, im in splits.values() for a in fn(ps, im, size, False)]

    def shared(fn: Any, size: int) -> list[Any]:
        return fn(prompts, images, size, True)

    def gen(ps: list[str], im: list[Any], size: int, share: bool) -> list[str]:
        return generate(model, processor, family, ps, im, decoding, batch_size=size, share_prefix=share)

    def logit(ps: list[str], im: list[Any], size: int, share: bool) -> list[dict[str, Any]]:
        return score_logits(model, processor, family, ps, im, tokens, batch_size=size, share_prefix=share)

    rows: list[tuple[str, float, str, str]] = []  # label, seconds, x today, check
    failed = False
    n = len(prompts)

    def compare(got: list[Any], want: list[Any], what: str) -> str:
        nonlocal failed
        same = sum(a == b for a, b in zip(got, want))
        failed |= same != len(want)
        return f"{same}/{len(want)} equal to {what}"

    for kind, fn, naive in (("generate", gen, naive_generate), ("logits", logit, naive_logits)):
        reference = None
        if n_naive:
            extra = (args.max_new_tokens,) if kind == "generate" else (tokens,)
            asked = (first[0][:n_naive], first[1][:n_naive], *extra)
            reference, seconds = timed(lambda naive=naive, asked=asked: naive(model, processor, family, *asked), sync)
            rows.append(
                (
                    f"naive {kind}, 1 at a time",
                    seconds * n / n_naive,
                    "",
                    f"reference ({n_naive} questions, time scaled to {n})",
                )
            )
        for size in sizes:
            base, base_s = timed(lambda size=size, fn=fn: today(fn, size), sync)
            answers = [a["answer"] for a in base] if kind == "logits" else base
            check = compare(answers[:n_naive], reference, "naive") if reference is not None else "-"
            rows.append((f"today's batched {kind}, batch {size}", base_s, "1.00", check))
            got, got_s = timed(lambda size=size, fn=fn: shared(fn, size), sync)
            check = compare([a["answer"] for a in got] if kind == "logits" else got, answers, "today's batched")
            if kind == "logits":
                drift = max(
                    max(abs(a["yes_score"] - b["yes_score"]), abs(a["no_score"] - b["no_score"]))
                    for a, b in zip(got, base)
                )
                check += f", max |score diff| {drift:.1e}"
            else:
                check += f" ({len(set(got))} distinct answers)"
            rows.append((f"prefix-shared {kind}, batch {size}", got_s, f"{got_s / base_s:.2f}", check))

    clock = "wall time" if sync else "this process's CPU time"
    print(f"seconds for all {n} questions, from {clock}; 'x today' = seconds / today's batched path, same batch size")
    print(f"{'path':36} {'seconds':>9} {'questions/s':>12} {'x today':>8}  answers")
    for label, seconds, ratio, check in rows:
        print(f"{label:36} {seconds:9.2f} {n / seconds:12.2f} {ratio:>8}  {check}")
    best = max(n / s for _, s, _, _ in rows)
    print(f"9,000 POPE questions at the best rate: {9000 / best / 60:.1f} min")
    if failed:
        print("ANSWER MISMATCH: a path does not reproduce its reference's answers", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
