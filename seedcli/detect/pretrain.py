"""World pretraining of the tiny detection rungs: ground the world's words in its images first.

Real vision-language models reach detection fine-tuning already able to tell whether an image shows
"a big fork" or "the fork left of the cup"; randomly initialised tiny rungs are not, and within a
CPU budget they learn only the base rate of each option kind. This module gives every tiny rung the
same head start, training all its weights on scenes drawn by the detection world's generator
(`seedcli.detect.world`) from its own random stream, never the detection items' stream:
- true captions, by language modelling ("describe the image." -> "a big fork and a small cat. the
  fork is left of the cat."), from the first step;
- after a caption-only warm start, short grounded yes/no questions as well, answered at the answer
  position as the detector answers:

    Answer yes or no: is this in the image?
    a big fork                      (existence, size, or "the fork is left of the cup")

half of them behind a detection-like context (a caption that states the phrase whether or not it is
true, and a shuffled option list: `_context`), since a detection option stands behind its caption and
option list, and rungs pretrained on bare questions lose their grounding behind such text.
Half the phrases are true of the scene; the others name an absent kind (half the time the usual
partner of a present one), give a present object the wrong size, or reverse a true relation. The
label words are drawn from the detector's pairs (yes/no, true/false, right/wrong). Every rung gets
the same corpus, the same number of steps and the same optimiser settings (`PretrainRecipe`).

The result is an ordinary checkpoint, cached by `seedcli.models.tiny` under the rung's name with a
`-world` suffix (`tiny-qwen2-vl-s-world`, ...), keyed by the base rung and the recipe. Training is
deterministic on CPU for a given recipe and thread count: one torch seed, seeded corpus and order.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from seedcli.detect import prompts
from seedcli.detect.questions import Question
from seedcli.reporting import NullReporter, Reporter

PRETRAIN_VERSION = 5  # bump when the corpus or the training loop changes what it computes
META_FILE = "pretrain.json"
PROMPT = "Answer {yes} or {no}: is this in the image?\n{phrase}"
# A question may stand behind a caption that names its phrase whether or not it is true and a list of
# phrases, as a detection option stands behind its caption and the option list: the answer has to come
# from the image, not from the text in front of the question.
CONTEXT = "Caption: {caption}\nOptions: {options}\n"
CAPTION_PROMPT = "describe the image."
KINDS = ("object", "attribute", "relation")
STREAM = "detect-pretrain"  # the detection sets draw from "detect-<seed>": the streams never coincide


@dataclass(frozen=True)
class PretrainRecipe:
    """The corpus and the budget of world pretraining; the same for every rung."""

    scenes: int = 16000
    steps: int = 8000
    caption_only_steps: int = 600
    question_weight: float = 1.0
    context_share: float = 0.5  # share of questions behind a detection-like context (`_context`)
    held_out_scenes: int = 150  # scenes of the next stream scored at every tenth (questions behind a context)
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0


RECIPE = PretrainRecipe()


@dataclass
class Pictures:
    """Scene images held in memory, with the `get(index, flip)` interface of `scoring.Images`."""

    images: list[Any]

    def get(self, index: int, flip: bool) -> Any:
        """Image `index` (the corpus is never mirrored)."""
        return self.images[index]


@dataclass(frozen=True)
class Asked:
    """A question's phrase and a caption that states it: its (size, name) listing and relation phrases."""

    phrase: str
    listing: list[tuple[str, str]]
    relations: list[str]  # "fork is left of the cat"


def _asked(kind: str, true: bool, things: list[Any], rng: random.Random) -> Asked:
    """The phrase of a question of `kind`, true of the scene or not, and a caption that states it either way.

    The caption is written like a detection caption (objects in random order, other sizes and relations
    wrong at the detection world's rates), and it reads alike whether the asked phrase is true or not:
    an object question's caption always lists one absent object (the asked one, or another) and no
    relation; the asked size or relation is stated as asked. Only the image tells.
    """
    from seedcli.detect import world

    rates = world.WorldSpec()
    sized = {t.name: world.other_size(t.size) if rng.random() < rates.attribute_rate else t.size for t in things}
    listing = [(sized[t.name], t.name) for t in things]
    rng.shuffle(listing)

    def relation_phrase(a: Any, b: Any, wrong: bool) -> str:
        relation = world.true_relation(a, b, rng)
        return f"{a.name} is {world.OPPOSITE[relation] if wrong else relation} the {b.name}"

    if kind == "object":
        name = rng.choice(things).name if true else world.absent_kind(things, rng)
        phantom = name if not true else world.absent_kind(things, rng)
        listing.insert(rng.randrange(len(listing) + 1), (rng.choice(tuple(prompts.SIZES)), phantom))
        return Asked(f"{world.article(name)} {name}", listing, [])
    if rng.random() < rates.object_rate:
        phantom = world.absent_kind(things, rng)
        listing.insert(rng.randrange(len(listing) + 1), (rng.choice(tuple(prompts.SIZES)), phantom))
    pairs = [(a, b) for a in things for b in things if a is not b]
    if kind == "attribute":
        thing = rng.choice(things)
        size = thing.size if true else world.other_size(thing.size)
        listing = [(size if name == thing.name else other, name) for other, name in listing]
        chosen = rng.sample(pairs, min(len(pairs), rng.randint(*rates.relations)))
        relations = [relation_phrase(a, b, rng.random() < rates.relation_rate) for a, b in chosen]
        return Asked(f"{world.article(size)} {size} {thing.name}", listing, list(dict.fromkeys(relations)))
    a, b = rng.sample(things, 2)
    asked = relation_phrase(a, b, not true)
    relations = [asked]
    if rng.random() < 0.5:
        c, d = rng.choice(pairs)
        relations.insert(rng.randrange(2), relation_phrase(c, d, rng.random() < rates.relation_rate))
    return Asked(f"the {asked}", listing, list(dict.fromkeys(relations)))


def caption(things: list[Any], rng: random.Random) -> str:
    """A true caption: the objects in reading order (grid cells) with their sizes, then one or two relations."""
    from seedcli.detect import world

    ordered = sorted(things, key=lambda t: t.cell)
    text = world.object_list([(t.size, t.name) for t in ordered]) + "."
    pairs = [(a, b) for a in ordered for b in ordered if a is not b]
    for a, b in rng.sample(pairs, min(len(pairs), rng.randint(1, 2))):
        text += f" the {a.name} is {world.true_relation(a, b, rng)} the {b.name}."
    return text


def _context(asked: Asked, rng: random.Random) -> str:
    """The caption stating `asked` (a detection caption's opener and sentences), then its shuffled options."""
    from seedcli.detect import world

    listed = [*(name for _, name in asked.listing), *(f"{size} {name}" for size, name in asked.listing)]
    listed += asked.relations
    rng.shuffle(listed)
    ids = prompts.IDENTIFIER_SETS[rng.randrange(len(prompts.IDENTIFIER_SETS))]
    options = "; ".join(f"{i}. {option}" for i, option in zip(ids, listed))
    sentences = [f"{rng.choice(prompts.CAPTION_OPENERS)} {world.object_list(asked.listing)}."]
    sentences += [f"The {relation}." for relation in asked.relations]
    return CONTEXT.format(caption=" ".join(sentences), options=options)


@dataclass(frozen=True)
class Corpus:
    """Scene images, one true caption per scene, and the yes/no questions (with their kinds)."""

    images: list[Any]
    captions: list[str]
    questions: list[Question]
    kinds: list[str]


def corpus(scenes: int, seed: int, context_share: float = 0.0) -> Corpus:
    """`scenes` scenes from the pretraining stream `seed`: images, captions, one question per kind and scene.

    A share `context_share` of the questions stands behind a detection-like context (`_context`): a
    caption that states the question's phrase whether or not it is true, and a list of its phrases.
    """
    from seedcli.detect import world

    spec = world.WorldSpec()
    rng = random.Random(f"{STREAM}-{seed}")
    images: list[Any] = []
    captions: list[str] = []
    questions: list[Question] = []
    kinds: list[str] = []
    for index in range(scenes):
        things = world.scene(rng, spec)
        images.append(world.draw(things, spec.image_size, rng))
        captions.append(caption(things, rng))
        for kind in KINDS:
            if kind == "relation" and len(things) < 2:
                continue
            true = rng.random() < 0.5
            yes, no = prompts.LABEL_WORDS[rng.randrange(len(prompts.LABEL_WORDS))]
            asked = _asked(kind, true, things, rng)
            prompt = PROMPT.format(yes=yes, no=no, phrase=asked.phrase)
            if rng.random() < context_share:
                prompt = _context(asked, rng) + prompt
            questions.append(Question(index, -1, prompt, (yes, no), False, int(not true)))
            kinds.append(kind)
    return Corpus(images, captions, questions, kinds)


def spec(recipe: PretrainRecipe | None = None) -> dict[str, Any]:
    """What a pretrained rung is built from besides its base rung (part of its cache key)."""
    import torch
    import transformers

    from seedcli.detect.world import WorldSpec

    # held_out_scenes only measures (no weight depends on it), so it is not part of the key; nor is the
    # size of the detection sets' unlabelled split (pretraining draws scenes, never detection items).
    trained = {k: v for k, v in asdict(recipe or RECIPE).items() if k != "held_out_scenes"}
    return {
        "recipe": trained,
        "world": {k: v for k, v in asdict(WorldSpec()).items() if k != "unlabelled"},
        "version": PRETRAIN_VERSION,
        "prompts": [PROMPT, CAPTION_PROMPT, CONTEXT],
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
    }


def _encode_captions(loaded: Any, data: Corpus) -> list[Any]:
    from seedcli.models.chat import encode

    return [
        encode(
            loaded.processor,
            loaded.family,
            [{"role": "user", "content": CAPTION_PROMPT}, {"role": "assistant", "content": text}],
            image,
            where=f"pretraining scene {i}",
        )
        for i, (image, text) in enumerate(zip(data.images, data.captions))
    ]


def _order(n: int, seed: int, epoch: int, kind: str) -> list[int]:
    order = list(range(n))
    random.Random(f"{seed}/{kind}/{epoch}").shuffle(order)
    return order


def pretrain(loaded: Any, recipe: PretrainRecipe, reporter: Reporter | None = None) -> dict[str, Any]:
    """Train all weights of `loaded.model` on the world corpus in place; stats: losses, held-out accuracy per tenth."""
    import torch

    from seedcli.core.distill import warmup_cosine
    from seedcli.detect.losses import label_ce
    from seedcli.detect.scoring import answer_logits, encode_batch
    from seedcli.models.chat import collate
    from seedcli.models.forward import model_inputs, supervised, supervised_logits

    reporter = reporter or NullReporter()
    started = time.monotonic()
    data = corpus(recipe.scenes, recipe.seed, recipe.context_share)
    pictures = Pictures(data.images)
    captions = _encode_captions(loaded, data)
    pad = loaded.processor.tokenizer.pad_token_id
    model = loaded.model
    torch.manual_seed(recipe.seed)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = warmup_cosine(recipe.steps, int(recipe.warmup_ratio * recipe.steps), recipe.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    size = recipe.batch_size
    caption_batches = max(1, len(captions) // size)
    question_batches = max(1, len(data.questions) // size)
    curves: dict[str, list[float]] = {"caption": [], "question": []}
    held_out = corpus(recipe.held_out_scenes, recipe.seed + 1, 1.0) if recipe.held_out_scenes else None
    learning: list[dict[str, float]] = []  # held-out accuracy per kind at every tenth
    window: dict[str, list[float]] = {"caption": [], "question": []}
    with reporter.task("world pretraining", total=recipe.steps, unit="step") as task:
        for step in range(recipe.steps):
            # Every step sees one batch of captions (language modelling) and, after the caption-only warm
            # start, one batch of questions: a random yes/no task alone collapses to a constant answer.
            at = step % caption_batches
            order = _order(len(captions), recipe.seed, step // caption_batches, "caption")
            batch = collate([captions[i] for i in order[at * size : (at + 1) * size]], pad_id=pad)
            sup = supervised(batch["labels"])
            logits = supervised_logits(model, model_inputs(batch), sup.mask)  # [N, V]
            loss = torch.nn.functional.cross_entropy(logits.float(), sup.targets)
            window["caption"].append(float(loss.detach()))
            if step >= recipe.caption_only_steps:
                k = step - recipe.caption_only_steps
                at = k % question_batches
                order = _order(len(data.questions), recipe.seed, k // question_batches, "question")
                asked = [data.questions[i] for i in order[at * size : (at + 1) * size]]
                target = torch.tensor([q.target for q in asked], device=loaded.device)  # [B]
                answers = answer_logits(loaded, model, encode_batch(loaded, asked, pictures), asked)  # [B, 2]
                question_loss = label_ce(answers, target)
                window["question"].append(float(question_loss.detach()))
                loss = loss + recipe.question_weight * question_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
            optimizer.step()
            scheduler.step()
            if (step + 1) % max(1, recipe.steps // 10) == 0 or step == recipe.steps - 1:
                for name, values in window.items():
                    if values:
                        curves[name].append(round(sum(values) / len(values), 4))
                        values.clear()
                if held_out is not None:
                    scores = corpus_accuracy(loaded, model, held_out)
                    learning.append({"step": step + 1, **{k: round(v, 4) for k, v in scores.items()}})
            task.advance(1, loss=float(loss.detach()))
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return {
        "steps": recipe.steps,
        "scenes": recipe.scenes,
        "questions": len(data.questions),
        "losses": curves,
        "held_out": learning,
        "seconds": round(time.monotonic() - started, 1),
        "recipe": asdict(recipe),
    }


def build(
    base: str, out: Path, recipe: PretrainRecipe | None = None, reporter: Reporter | None = None
) -> dict[str, Any]:
    """Load tiny rung `base`, pretrain it on the world and save model + processor + stats to `out`."""
    from seedcli.models.loading import load

    loaded = load(base, dtype="fp32", device="cpu")
    return _save_rung(loaded, out, {"base": base, **pretrain(loaded, recipe or RECIPE, reporter)})


def _save_rung(loaded: Any, out: Path, stats: dict[str, Any]) -> dict[str, Any]:
    """Model + processor + the pretraining stats (`META_FILE`) into `out`; returns the stats."""
    loaded.model.save_pretrained(str(out))
    loaded.processor.save_pretrained(str(out))
    (Path(out) / META_FILE).write_text(json.dumps(stats, indent=2), encoding="utf-8")
    return stats


@dataclass(frozen=True)
class Growth:
    """A rung grown from a world-pretrained smaller one (`grow`), then world-pretrained again with `RECIPE`."""

    source: str  # the world-pretrained rung it starts from
    text_intermediate: int  # MLP width of the language model's layers
    vision_mlp_ratio: int  # MLP width of the vision blocks, in multiples of their embedding width
    seed: int = 0  # initialisation of the new units' input weights


def grow(small: Any, growth: Growth) -> Any:
    """A copy of the Qwen2-VL `small` with wider MLPs that computes exactly what `small` computes.

    Old weights are copied; a new unit's input weights keep the fresh initialisation (seeded by the caller)
    and its output weights are zero, so it adds nothing until training moves them.
    """
    import copy

    from transformers import Qwen2VLForConditionalGeneration

    config = copy.deepcopy(small.config)
    config.text_config.intermediate_size = growth.text_intermediate
    config.vision_config.mlp_ratio = growth.vision_mlp_ratio
    big = Qwen2VLForConditionalGeneration(config)
    old = small.state_dict()
    state = {}
    for name, fresh in big.state_dict().items():
        weight = old[name]
        if weight.shape == fresh.shape:
            state[name] = weight.clone()
            continue
        grown = fresh.clone()
        if name.endswith(("down_proj.weight", "fc2.weight")):  # [out, units]: the new units' columns are zero
            grown.zero_()
            grown[:, : weight.shape[1]] = weight
        else:  # gate/up/fc1 [units, in] and fc1's bias [units]: the new units' rows keep their initialisation
            grown[: weight.shape[0]] = weight
        state[name] = grown
    big.load_state_dict(state)
    return big.eval()


def build_grown(
    growth: Growth, out: Path, recipe: PretrainRecipe | None = None, reporter: Reporter | None = None
) -> dict[str, Any]:
    """Grow `growth.source` (built first if absent) into a wider rung, pretrain it on the world, save it to `out`."""
    import shutil
    import tempfile

    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from seedcli.models.loading import load
    from seedcli.models.tiny import ensure_tiny

    source = ensure_tiny(growth.source)
    torch.manual_seed(growth.seed)
    small = Qwen2VLForConditionalGeneration.from_pretrained(str(source))
    # Saved and loaded back like any rung, so the grown model trains under the loader's settings.
    with tempfile.TemporaryDirectory(prefix=".grown-", dir=Path(out).parent) as tmp:
        grow(small, growth).save_pretrained(tmp)
        for path in source.iterdir():
            if path.name not in {"config.json", "model.safetensors", "generation_config.json", META_FILE}:
                shutil.copy(path, Path(tmp) / path.name)  # tokenizer and processor files
        loaded = load(tmp, dtype="fp32", device="cpu")
    stats = {"base": growth.source, "growth": asdict(growth), **pretrain(loaded, recipe or RECIPE, reporter)}
    return _save_rung(loaded, out, stats)


def accuracy(
    loaded: Any, model: Any, scenes: int, seed: int, batch_size: int = 64, context_share: float = 0.0
) -> dict[str, float]:
    """Per-kind accuracy of `model` on a held-out corpus (another seed) of the pretraining questions."""
    return corpus_accuracy(loaded, model, corpus(scenes, seed, context_share), batch_size)


def corpus_accuracy(loaded: Any, model: Any, data: Corpus, batch_size: int = 64) -> dict[str, float]:
    """Per-kind share of `data`'s questions that `model` answers right (argmax of the two label words)."""
    import torch

    from seedcli.detect.scoring import answer_logits, encode_batch

    pictures = Pictures(data.images)
    questions, kinds = data.questions, data.kinds
    right = {k: 0 for k in KINDS}
    total = {k: 0 for k in KINDS}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(questions), batch_size):
            batch = questions[start : start + batch_size]
            logits = answer_logits(loaded, model, encode_batch(loaded, batch, pictures), batch)
            for q, kind, guess in zip(batch, kinds[start : start + batch_size], logits.argmax(-1).tolist()):
                right[kind] += int(guess == q.target)
                total[kind] += 1
    model.train(was_training)
    return {k: right[k] / total[k] for k in KINDS if total[k]}
