"""Where does a hallucinated "yes" come from: the text, or the visible anchor object?

On the synthetic world's held-out images, asks the world-trained base model "Is there a {object}
in the image?" and reports the mean P(yes) (yes vs no next-token mass) with the clean image, with
the SEED-noised image (v' = sqrt(a) v + sqrt(1-a) eps), and under SEED's purified target
((1 + beta) z(v) - beta z(v')). With `--cases partners` (the original probe) only the partner
objects that are ABSENT are asked, split by whether the partner's anchor is visible; with
`--cases all` (default) every object is asked, so each hallucination source shows up as a row:
"present" (what a good answer says yes to), "absent partner, anchor visible" (co-occurrence and
hallucinated annotations), "absent partner, anchor absent" and "absent other" (the text-borne
yes-bias of the question). If the anchor-visible P(yes) drops under noise, the bias is visual: the
contrast then pushes the purified target towards MORE "yes", not less; a P(yes) that noise raises
is a prior the contrast removes.

    python benchmarks/prior_probe.py --model seed-quickstart/... --data seed-quickstart/data

(`--model` is the cached world model; the quickstart prints its path while training it.)
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def main() -> None:
    """Run the probe and print a table (and JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="world-trained base model directory")
    parser.add_argument("--data", required=True, help="synthetic data directory (seed prepare --synthetic)")
    parser.add_argument("--noise-alpha", type=float, default=0.3)
    parser.add_argument("--beta", type=float, default=0.8, help="purification strength (mid bucket of the defaults)")
    parser.add_argument("--noise-draws", type=int, default=4)
    parser.add_argument("--cases", choices=("all", "partners"), default="all", help="objects to ask about (see above)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch
    from PIL import Image

    from seedcli.core.noise import add_diffusion_noise
    from seedcli.data.datadir import open_data_dir
    from seedcli.data.synthetic import KINDS, PAIRS, article
    from seedcli.evals.pope_logits import answer_tokens
    from seedcli.evals.prompts import LLAVA_POPE_SUFFIX, pope_prompt
    from seedcli.models.chat import collate, encode_prompt
    from seedcli.models.loading import load

    torch.manual_seed(0)
    loaded = load(args.model, device="cpu")
    data = open_data_dir(Path(args.data))
    instances = json.loads((data.root / "images" / "annotations" / "instances_val2014.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    present: dict[int, set[str]] = {}
    for ann in instances["annotations"]:
        present.setdefault(ann["image_id"], set()).add(names[ann["category_id"]])
    files = {im["id"]: im["file_name"] for im in instances["images"]}
    tokens = answer_tokens(loaded.processor.tokenizer)
    pad = loaded.processor.tokenizer.pad_token_id

    def p_yes(logits: torch.Tensor) -> float:
        yes = torch.logsumexp(logits[list(tokens.yes_ids)], 0)
        no = torch.logsumexp(logits[list(tokens.no_ids)], 0)
        return float(torch.sigmoid(yes - no))

    groups: dict[str, dict[str, list[float]]] = {}
    generator = torch.Generator().manual_seed(0)
    for image_id, objects in sorted(present.items()):
        with Image.open(data.resolve_image("pope", files[image_id])) as handle:
            image = handle.convert("RGB")
        anchor_of = {partner: anchor for anchor, partner in PAIRS}
        for kind in KINDS:
            name = kind.name
            if name in anchor_of and name not in objects:
                case = "anchor visible" if anchor_of[name] in objects else "anchor absent"
                case = case if args.cases == "partners" else f"absent partner, {case}"
            elif args.cases == "partners":
                continue
            else:
                case = "present" if name in objects else "absent other"
            question = f"Is there {article(name)} {name} in the image?"
            enc = encode_prompt(loaded.processor, loaded.family, pope_prompt(question, LLAVA_POPE_SUFFIX), image)
            batch = collate([enc], pad_id=pad)
            batch.pop("labels")
            with torch.no_grad():
                clean = loaded.model(**batch).logits[0, -1].float()
                noisy_draws = []
                for _ in range(args.noise_draws):
                    noised = {
                        **batch,
                        "pixel_values": add_diffusion_noise(batch["pixel_values"], args.noise_alpha, generator),
                    }
                    noisy_draws.append(loaded.model(**noised).logits[0, -1].float())
            noisy = torch.stack(noisy_draws)
            purified = (1 + args.beta) * clean - args.beta * noisy
            row = groups.setdefault(
                case, {"clean": [], "noised": [], "purified": [], "yes clean": [], "yes purified": []}
            )
            row["clean"].append(p_yes(clean))
            row["noised"].append(statistics.fmean(p_yes(n) for n in noisy))
            row["purified"].append(statistics.fmean(p_yes(p) for p in purified))
            # The answer a greedy reader takes: yes when P(yes) > 0.5 (purified: averaged over draws).
            row["yes clean"].append(float(p_yes(clean) > 0.5))
            row["yes purified"].append(float(statistics.fmean(p_yes(p) for p in purified) > 0.5))

    summary = {
        case: {k: statistics.fmean(v) for k, v in row.items()} | {"n": len(row["clean"])}
        for case, row in groups.items()
    }
    print(f"mean P(yes) per case (a={args.noise_alpha}, beta={args.beta}, {args.noise_draws} noise draws)")
    print(f"{'case':<31} {'n':>5} {'clean':>8} {'noised':>8} {'purified':>9} {'yes% clean':>11} {'yes% purified':>14}")
    for case, row in sorted(summary.items()):
        shares = f"{100 * row['yes clean']:>11.1f} {100 * row['yes purified']:>14.1f}"
        print(f"{case:<31} {row['n']:>5} {row['clean']:>8.3f} {row['noised']:>8.3f} {row['purified']:>9.3f} {shares}")
    if args.json:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
