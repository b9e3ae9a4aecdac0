"""Model shapes for the benchmarks, FLOP counting, and benchmark data directories.

Shapes:
- `tiny-llava`: the project's offline tiny model (seedcli.models.tiny), loaded by name; CPU.
- `small-llava`: randomly initialised, LLaVA-1.5 sequence layout (336 px image, patch 14 -> 576 image
  tokens) and vocabulary (32,064) with a narrow 2-layer Llama and CLIP: realistic token counts and
  vocabulary-sized logits at CPU cost.
- `llava-7b`: randomly initialised LLaVA-1.5-7B shape built from a config, never downloaded:
  Llama-2-7B text config (hidden 4096, 32 layers, 32 heads, MLP 11008, vocabulary 32,064) and CLIP
  ViT-L/14-336 (hidden 1024, 24 layers, 16 heads, MLP 4096), features from layer -2, 576 image
  tokens; bf16 on a GPU.
The built shapes use a local word-level tokenizer (ids are all that matter for speed) with the
tiny LLaVA chat template.

FLOPs per sample (documented in docs/performance.md), with L = sequence tokens, N = supervised
tokens, P = patches + 1 (CLS), matrix parameters only (embedding lookups are free, the LM head is
counted on the N supervised rows the loop computes):
    F_vision = 2 * params_vision * P + 4 * layers_v * P^2 * hidden_v   (+ projector 2 * params_proj * 576)
    F_lm     = 2 * params_lm_body * L + 4 * layers * L^2 * hidden        (QK^T and AV, full square)
    F_head   = 2 * hidden * vocab * N
    one forward F = F_vision + F_lm + F_head
    SFT step  = F_vision + factor * (F_lm + F_head)        factor = 3 by convention (forward + backward)
    SEED step = SFT step + 2 * F                           (clean + noisy teacher, forward only)
The vision tower is frozen and adapter-free, so it runs forward only in the student too. With a
frozen base the backward computes activation gradients but no weight gradients, so the work the
hardware really does is closer to factor = 2; both are reported.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE_TOKEN = "<image>"
SPECIALS = ("<unk>", "<pad>", "<s>", "</s>", IMAGE_TOKEN)


@dataclass(frozen=True)
class Shape:
    """A benchmark model shape and the text lengths of its synthetic samples."""

    name: str
    question_words: int
    answer_words: int
    image_size: int
    text: dict[str, Any] = field(default_factory=dict)  # LlamaConfig kwargs (built shapes)
    vision: dict[str, Any] = field(default_factory=dict)  # CLIPVisionConfig kwargs (built shapes)
    vision_feature_layer: int = -2

    @property
    def built(self) -> bool:
        """Whether the model is built from a config here (else loaded by name)."""
        return bool(self.text)


SHAPES: dict[str, Shape] = {
    "tiny-llava": Shape(name="tiny-llava", question_words=12, answer_words=40, image_size=32),
    "small-llava": Shape(
        name="small-llava",
        question_words=20,
        answer_words=120,
        image_size=336,
        text=dict(
            hidden_size=256,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            vocab_size=32064,
            max_position_embeddings=2048,
        ),
        vision=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=336,
            patch_size=14,
            projection_dim=64,
        ),
    ),
    "llava-7b": Shape(
        name="llava-7b",
        question_words=20,
        answer_words=120,
        image_size=336,
        text=dict(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=32064,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
        ),
        vision=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
        ),
    ),
}


# Real words the prompts use (POPE's question, LLaVA's suffix, the yes/no answers), then fillers.
PROMPT_WORDS = (
    "yes",
    "no",
    "is",
    "there",
    "a",
    "an",
    "in",
    "the",
    "image",
    "answer",
    "question",
    "using",
    "single",
    "word",
    "or",
    "phrase",
    "user",
    "assistant",
    ".",
    "?",
    ":",
)


def _words(vocab_size: int) -> list[str]:
    """PROMPT_WORDS, then filler words w0, w1, ... so that the tokenizer has exactly `vocab_size` ids."""
    return [*PROMPT_WORDS, *(f"w{i}" for i in range(vocab_size - len(SPECIALS) - len(PROMPT_WORDS)))]


def build_processor(shape: Shape) -> Any:
    """A LlavaProcessor with a local word-level tokenizer over the shape's vocabulary."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import LlavaProcessor, PreTrainedTokenizerFast
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    from seedcli.models.tiny import LLAVA_TEMPLATE

    vocab = {token: i for i, token in enumerate([*SPECIALS, *_words(shape.text["vocab_size"])])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens(list(SPECIALS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="</s>",
        bos_token="<s>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    size = shape.image_size
    image_processor = LlavaImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=shape.vision["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )


def build_model(
    shape: Shape, processor: Any, dtype: Any, device: str, attn_implementation: str = "sdpa", seed: int = 0
) -> Any:
    """A randomly initialised LlavaForConditionalGeneration of the shape, created directly on `device` in `dtype`."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tok = processor.tokenizer
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**shape.vision),
        text_config=LlamaConfig(
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            tie_word_embeddings=False,
            **shape.text,
        ),
        image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=shape.vision_feature_layer,
        pad_token_id=tok.pad_token_id,
    )
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model.eval()


def loaded(shape: Shape, dtype: str, device: str, attn_implementation: str = "sdpa") -> Any:
    """A `seedcli.models.loading.Loaded` for the shape (built, or loaded by name for tiny models)."""
    import torch

    from seedcli.models.families import ModelRef, family_for
    from seedcli.models.loading import Loaded, load, resolve_device, resolve_dtype

    if not shape.built:
        return load(shape.name, dtype=dtype, device=device, attn_implementation=attn_implementation)
    device_name = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device_name)
    processor = build_processor(shape)
    model = build_model(shape, processor, torch_dtype, device_name, attn_implementation)
    ref = ModelRef(name=shape.name, source=f"random-init:{shape.name}", kind="local")
    return Loaded(
        model=model,
        processor=processor,
        family=family_for("llava"),
        ref=ref,
        dtype=torch_dtype,
        device=torch.device(device_name),
        quantization="none",
    )


def vocabulary_words(shape: Shape, processor: Any) -> list[str]:
    """Ordinary words the shape's tokenizer knows (one token each)."""
    if shape.built:
        return _words(shape.text["vocab_size"])[len(PROMPT_WORDS) : len(PROMPT_WORDS) + 4000]
    from seedcli.models.tiny import BASE_WORDS

    return [w for w in BASE_WORDS if w.isalpha()]


def write_data(root: Path, shape: Shape, processor: Any, n: int, seed: int = 0) -> Path:
    """A data directory of `n` single-turn records, all of the same token length, with plain images."""
    from PIL import Image

    from seedcli.data.datadir import Record, write_manifest, write_train

    rng = random.Random(seed)
    words = vocabulary_words(shape, processor)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        color = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        Image.new("RGB", (shape.image_size, shape.image_size), color).save(root / "images" / f"{i}.png")
        question = " ".join(rng.choice(words) for _ in range(shape.question_words))
        answer = " ".join(rng.choice(words) for _ in range(shape.answer_words))
        messages = ({"role": "user", "content": question}, {"role": "assistant", "content": answer})
        records.append(Record(id=str(i), image=f"{i}.png", messages=messages))
    write_train(root, records)
    write_manifest(
        root,
        source={"kind": "benchmark", "shape": shape.name},
        seed=seed,
        counts={"train": n},
        dropped={},
        image_roots={"train": "images"},
    )
    return root


@dataclass(frozen=True)
class Counts:
    """Parameter and layout counts the FLOP formula needs."""

    vision_params: int
    projector_params: int
    lm_body_params: int
    layers: int
    hidden: int
    vocab: int
    vision_layers: int
    vision_hidden: int
    image_tokens: int

    @property
    def patches(self) -> int:
        """Vision sequence length (patches + CLS)."""
        return self.image_tokens + 1


def counts(model: Any, image_tokens: int) -> Counts:
    """Matrix parameter counts of a LLaVA model (embedding tables and the LM head excluded from the body)."""
    from seedcli.models.forward import unwrap

    base = unwrap(model)
    inner = base.model
    text = base.config.text_config
    vision = base.config.vision_config

    def params(module: Any) -> int:
        return sum(
            p.numel() for n, p in module.named_parameters() if p.dim() >= 2 and "embed" not in n and "lora_" not in n
        )

    return Counts(
        vision_params=params(inner.vision_tower),
        projector_params=params(inner.multi_modal_projector),
        lm_body_params=params(inner.language_model),
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        vocab=text.vocab_size,
        vision_layers=vision.num_hidden_layers,
        vision_hidden=vision.hidden_size,
        image_tokens=image_tokens,
    )


@dataclass(frozen=True)
class Flops:
    """FLOPs of one sample's passes (see the module docstring)."""

    vision: float
    lm: float
    head: float

    @property
    def forward(self) -> float:
        """One full forward."""
        return self.vision + self.lm + self.head

    def step(self, method: str, factor: float = 3.0) -> float:
        """Model FLOPs of one SFT or SEED step for this sample."""
        sft = self.vision + factor * (self.lm + self.head)
        return sft + 2 * self.forward if method == "seed" else sft


def flops(c: Counts, seq_len: int, supervised: int) -> Flops:
    """Per-sample forward FLOPs for a sequence of `seq_len` tokens with `supervised` supervised rows."""
    p = c.patches
    vision = (
        2 * c.vision_params * p
        + 4 * c.vision_layers * p * p * c.vision_hidden
        + 2 * c.projector_params * c.image_tokens
    )
    lm = 2 * c.lm_body_params * seq_len + 4 * c.layers * seq_len * seq_len * c.hidden
    head = 2 * c.hidden * c.vocab * supervised
    return Flops(vision=float(vision), lm=float(lm), head=float(head))
