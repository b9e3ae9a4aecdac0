"""POPE questions/s: `seed evaluate`'s batched paths against a naive one-question-at-a-time loop.

Same model, same questions (6 per image, POPE's "Is there a/an X in the image?" with LLaVA's
suffix), in one run:
- naive generate: `model.generate(max_new_tokens, greedy)` for one question at a time;
- seedcli generate: `seedcli.evals.generation.generate` (left padding, KV cache) at each batch size;
- naive logits: one unbatched forward per question, yes/no decision from the next-token logits;
- seedcli logits: `seedcli.evals.pope_logits.score_logits` (what `--pope-scoring logits` runs).
Generated answers are checked equal to the naive loop's answer for answer, and logit decisions to
the naive logit decisions; a mismatch is printed and makes the exit code 1.

    python benchmarks/pope_throughput.py --shape tiny-llava --images 8 --batch-sizes 1,8,24
    python benchmarks/pope_throughput.py --shape llava-7b --images 100 --batch-sizes 1,16,64 --naive-images 20

--naive-images limits the naive loops to the first N images (they are slow); their rate is
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

from seedcli.evals.generation import Decoding, encode_all, eos_ids, generate, model_device_dtype, pad_id, to_batch  # noqa: E402
from seedcli.evals.pope_logits import answer_tokens, score_logits, yes_no_scores  # noqa: E402
from seedcli.evals.prompts import LLAVA_POPE_SUFFIX, pope_prompt  # noqa: E402
from seedcli.models import loading  # noqa: E402

QUESTIONS_PER_IMAGE = 6


def questions(shape: shapes.Shape, processor: Any, images: int, seed: int = 0) -> tuple[list[str], list[Any]]:
    """Six yes/no questions per plain-colour image (3 objects asked about twice, like POPE's pairs)."""
    from PIL import Image

    rng = random.Random(seed)
    words = [w for w in shapes.vocabulary_words(shape, processor)]
    prompts, pictures = [], []
    for _ in range(images):
        image = Image.new("RGB", (shape.image_size, shape.image_size), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        for _ in range(QUESTIONS_PER_IMAGE):
            word = rng.choice(words)
            article = "an" if word[0] in "aeiou" else "a"
            prompts.append(pope_prompt(f"Is there {article} {word} in the image?", LLAVA_POPE_SUFFIX))
            pictures.append(image)
    return prompts, pictures


def naive_generate(model: Any, processor: Any, family: Any, prompts: list[str], images: list[Any], max_new_tokens: int) -> list[str]:
    """One `model.generate` call per question (greedy), answers cut at the first end-of-sequence id."""
    device, dtype = model_device_dtype(model)
    pad = pad_id(processor)
    stop = eos_ids(model, processor)
    out = []
    with torch.inference_mode():
        for prompt, image in zip(prompts, images):
            inputs = to_batch(encode_all(processor, family, [prompt], [image]), pad=pad, device=device, dtype=dtype)
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)[0, inputs["input_ids"].shape[1] :].tolist()
            end = next((i for i, t in enumerate(ids) if t in stop), len(ids))
            out.append(processor.tokenizer.decode(ids[:end], skip_special_tokens=True).strip())
    return out


def naive_logits(model: Any, processor: Any, family: Any, prompts: list[str], images: list[Any], tokens: Any) -> list[str]:
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
    """(result, seconds): wall seconds on GPU; this process's CPU seconds on CPU (a shared CPU's wall time includes other jobs)."""
    clock = time.perf_counter if sync else time.process_time
    if sync:
        torch.cuda.synchronize()
    started = clock()
    result = fn()
    if sync:
        torch.cuda.synchronize()
    return result, clock() - started


def main() -> int:
    """Run the naive and batched paths, check answers, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(shapes.SHAPES), default="tiny-llava")
    parser.add_argument("--images", type=int, default=8, help="Images (x6 questions) for the batched paths.")
    parser.add_argument("--naive-images", type=int, default=None, help="Images for the naive loops (default: all).")
    parser.add_argument("--batch-sizes", default="1,8,24")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (CPU runs: 1 makes CPU time = compute).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = loading.resolve_device(args.device)
    sync = device == "cuda"
    loaded = shapes.loaded(shapes.SHAPES[args.shape], args.dtype, device)
    model, processor, family = loaded.model, loaded.processor, loaded.family
    shape = shapes.SHAPES[args.shape]
    prompts, images = questions(shape, processor, args.images)
    n_naive = QUESTIONS_PER_IMAGE * (args.naive_images if args.naive_images is not None else args.images)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    decoding = Decoding(mode="greedy", max_new_tokens=args.max_new_tokens)
    tokens = answer_tokens(processor.tokenizer)
    print("command: " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    print(f"device: {torch.cuda.get_device_name() if sync else 'cpu'} ({torch.get_num_threads()} threads), torch {torch.__version__}, weights {loaded.dtype}; "
          f"{len(prompts)} questions ({args.images} images x {QUESTIONS_PER_IMAGE}), naive loops on the first {n_naive}, max_new_tokens {args.max_new_tokens}")

    # Warm-up (kernel selection, allocator) on two questions, untimed.
    generate(model, processor, family, prompts[:2], images[:2], decoding, batch_size=2)

    naive_answers, naive_s = timed(lambda: naive_generate(model, processor, family, prompts[:n_naive], images[:n_naive], args.max_new_tokens), sync)
    naive_rate = n_naive / naive_s
    rows = [("naive model.generate, 1 at a time", naive_rate, "reference")]
    failed = False
    for size in sizes:
        answers, seconds = timed(lambda size=size: generate(model, processor, family, prompts, images, decoding, batch_size=size), sync)
        mismatches = sum(a != b for a, b in zip(answers[:n_naive], naive_answers))
        failed |= mismatches > 0
        rows.append((f"seedcli generate, batch {size}", len(prompts) / seconds, f"{n_naive - mismatches}/{n_naive} equal"))
    naive_yes_no, naive_logit_s = timed(lambda: naive_logits(model, processor, family, prompts[:n_naive], images[:n_naive], tokens), sync)
    rows.append(("naive logits, 1 forward at a time", n_naive / naive_logit_s, "reference (logits)"))
    for size in sizes:
        scored, seconds = timed(lambda size=size: score_logits(model, processor, family, prompts, images, tokens, batch_size=size), sync)
        mismatches = sum(s["answer"] != a for s, a in zip(scored[:n_naive], naive_yes_no))
        failed |= mismatches > 0
        rows.append((f"seedcli logits, batch {size}", len(prompts) / seconds, f"{n_naive - mismatches}/{n_naive} equal to naive logits"))

    print("questions/s from " + ("wall time" if sync else "this process's CPU time"))
    print(f"{'path':38} {'questions/s':>12} {'x naive':>8}  answers")
    for label, rate, check in rows:
        print(f"{label:38} {rate:12.2f} {rate / naive_rate:8.2f}  {check}")
    print(f"9,000 POPE questions at the best rate: {9000 / max(r for _, r, _ in rows) / 60:.1f} min (naive: {9000 / naive_rate / 60:.1f} min)")
    if failed:
        print("ANSWER MISMATCH: a batched path does not reproduce the naive answers", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
