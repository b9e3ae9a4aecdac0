"""Tiny offline vision-language models, built deterministically and cached on disk.

`tiny-llava` (CLIP-style ViT + Llama) and `tiny-qwen2-vl` (Qwen2-VL ViT + Qwen2) are saved with
`save_pretrained` and loaded through the same `from_pretrained` path as real checkpoints. Their
tokenizer is word-level over a fixed vocabulary (the synthetic world's words, the COCO synonym
table, prompts and punctuation), built locally: no download.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

SEED = 0
IMAGE_SIZE = 32
BUILD_VERSION = 1  # bump when the builders change, so caches are rebuilt

LLAVA_SPECIAL = ("<unk>", "<pad>", "<s>", "</s>", "<image>")
QWEN_SPECIAL = (
    "<unk>",
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Chat templates in the style of the real checkpoints: LLaVA-1.5 ("USER: <image>\n... ASSISTANT:")
# and Qwen2-VL (ChatML with vision markers). Neither uses generation markers, like the originals.
LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'].upper() + ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] + ' ' }}{% endif %}{% endfor %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

BASE_WORDS = (
    "user assistant system yes no not none nothing there is are a an the in on of and or with to "
    "this that image picture photo what how many which where who it its one two three four five six "
    "seven eight nine ten zero 0 1 2 3 4 5 6 7 8 9 please answer question using single word phrase "
    "describe detail detailed objects object left right top bottom center next near i don t know "
    "can see shows show contains contain see"
).split()
PUNCTUATION = tuple(". , ? ! ' \" : ; - ( ) / \n".split(" ")) + ("\n",)

TEXT_SIZES: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
}
VISION_SIZES: dict[str, Any] = {"depth": 2, "embed_dim": 64, "num_heads": 4}


def _text_sizes(*, hidden: int, intermediate: int, layers: int, heads: int) -> dict[str, Any]:
    return {
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
    }


@dataclass(frozen=True)
class Rung:
    """One size of the Qwen2-VL-style model in the detection pyramid (`seed detect train --models`)."""

    text: dict[str, Any]
    vision: dict[str, Any]
    image_size: int = 32


# One decoder layer each, all with the smallest rung's attention (width 32, two heads of 16, so the
# multimodal RoPE sections stay valid); the rungs grow in MLP width (64, 128, 256) and vision tower
# width (32, 48, 64). With two layers, or with attention as wide as the vision tower, the medium and
# largest rungs did not learn existence questions in world pretraining (docs/detect.md, "World-pretrained
# tiny rungs"). The rungs' vocabulary adds the detector's prompt language (seedcli.detect.prompts) to
# the world's words.
RUNGS: dict[str, Rung] = {
    "tiny-qwen2-vl-s": Rung(
        text=_text_sizes(hidden=32, intermediate=64, layers=1, heads=2),
        vision={"depth": 1, "embed_dim": 32, "num_heads": 2},
    ),
    "tiny-qwen2-vl-m": Rung(
        text=_text_sizes(hidden=32, intermediate=128, layers=1, heads=2),
        vision={"depth": 1, "embed_dim": 48, "num_heads": 3},
    ),
    "tiny-qwen2-vl-l": Rung(
        text=_text_sizes(hidden=32, intermediate=256, layers=1, heads=2),
        vision={"depth": 1, "embed_dim": 64, "num_heads": 4},
    ),
}


# The same rungs after world pretraining (seedcli.detect.pretrain): trained on true captions and grounded yes/no
# questions about the detection world's scenes, the analogue of a real VLM's pretraining.
WORLD_SUFFIX = "-world"
WORLD_RUNGS: dict[str, str] = {f"{name}{WORLD_SUFFIX}": name for name in RUNGS}
# A medium rung grown from the world-pretrained smallest one (wider MLPs, the same function at the start),
# then world-pretrained again: it learns existence questions, which the medium rung above did not
# (docs/detect.md, "World-pretrained tiny rungs"). name -> (source rung, text MLP width, vision MLP ratio).
GROWN_RUNGS: dict[str, tuple[str, int, int]] = {"tiny-qwen2-vl-m-grown-world": ("tiny-qwen2-vl-s-world", 128, 4)}


def _rung_words() -> tuple[str, ...]:
    from seedcli.detect.prompts import vocabulary

    return tuple(vocabulary())


def _word_list(extra: tuple[str, ...] = ()) -> list[str]:
    words = set(BASE_WORDS) | {p for p in PUNCTUATION if p.strip()} | set(extra)
    table = resources.files("seedcli.data").joinpath("coco_synonyms.txt").read_text(encoding="utf-8")
    words |= {w for w in re.findall(r"\w+", table.lower())}
    try:
        from seedcli.data import synthetic

        for entry in synthetic.vocabulary():
            words |= set(re.findall(r"\w+|[^\w\s]", entry.lower()))
    except ImportError:  # the synthetic world is optional for tokenizer building
        pass
    return sorted(words)


def _tokenizer(
    special: tuple[str, ...],
    extra_special: dict[str, str],
    eos: str,
    pad: str,
    bos: str | None,
    extra: tuple[str, ...] = (),
) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*special, *_word_list(extra)])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    core.add_special_tokens(list(special))
    kwargs: dict[str, Any] = {"unk_token": "<unk>", "pad_token": pad, "eos_token": eos}
    if bos:
        kwargs["bos_token"] = bos
    return PreTrainedTokenizerFast(tokenizer_object=core, extra_special_tokens=extra_special, **kwargs)


def _build_llava(out: Path) -> None:
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    tokenizer = _tokenizer(LLAVA_SPECIAL, {"image_token": "<image>"}, eos="</s>", pad="<pad>", bos="<s>")
    vocab = len(tokenizer)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=8,
            projection_dim=64,
        ),
        text_config=LlamaConfig(
            vocab_size=vocab,
            max_position_embeddings=512,
            pad_token_id=1,
            bos_token_id=2,
            eos_token_id=3,
            tie_word_embeddings=False,
            **TEXT_SIZES,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        pad_token_id=1,
    )
    torch.manual_seed(SEED)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = 1
    model.generation_config.eos_token_id = 3
    model.generation_config.bos_token_id = 2
    image_processor = LlavaImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)


def _build_qwen2_vl(
    out: Path,
    text: dict[str, Any] = TEXT_SIZES,
    vision: dict[str, Any] = VISION_SIZES,
    image_size: int = IMAGE_SIZE,
    extra_words: tuple[str, ...] = (),
) -> None:
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from seedcli.models.qwen2vl_processor import Qwen2VLImageOnlyProcessor

    tokens = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}
    tokenizer = _tokenizer(QWEN_SPECIAL, tokens, eos="<|im_end|>", pad="<|endoftext|>", bos=None, extra=extra_words)
    ids = tokenizer.convert_tokens_to_ids
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    section = [
        head_dim // 8,
        3 * head_dim // 16,
        3 * head_dim // 16,
    ]  # sums to head_dim / 2, Qwen2-VL's 16/24/24 proportions
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            max_position_embeddings=1024,
            bos_token_id=None,
            eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>"),
            rope_scaling={"type": "mrope", "mrope_section": section},
            tie_word_embeddings=False,
            **text,
        ),
        vision_config=dict(
            hidden_size=text["hidden_size"],
            mlp_ratio=2,
            patch_size=4,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
            **vision,
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        bos_token_id=None,
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
    )
    torch.manual_seed(SEED)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    model.generation_config.eos_token_id = ids("<|im_end|>")
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=pixels, max_pixels=pixels, patch_size=4, merge_size=2, temporal_patch_size=2
    )
    processor = Qwen2VLImageOnlyProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_TEMPLATE
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)


def _build_rung(name: str) -> Any:
    rung = RUNGS[name]
    return lambda out: _build_qwen2_vl(out, rung.text, rung.vision, rung.image_size, _rung_words())


def _build_world_rung(name: str) -> Any:
    def build(out: Path) -> None:
        from seedcli.detect.pretrain import build as pretrain

        # Minutes of CPU on first use; say so on stderr (stdout carries results).
        print(f"{name}: world pretraining of {WORLD_RUNGS[name]} (first use only, then cached)", file=sys.stderr)
        pretrain(WORLD_RUNGS[name], out)

    return build


def _growth(name: str) -> Any:
    from seedcli.detect.pretrain import Growth

    source, text_intermediate, vision_mlp_ratio = GROWN_RUNGS[name]
    return Growth(source, text_intermediate, vision_mlp_ratio)


def _build_grown_rung(name: str) -> Any:
    def build(out: Path) -> None:
        from seedcli.detect.pretrain import build_grown

        source = GROWN_RUNGS[name][0]
        print(f"{name}: grown from {source}, then world pretraining (first use only, then cached)", file=sys.stderr)
        build_grown(_growth(name), out)

    return build


BUILDERS = {
    "tiny-llava": _build_llava,
    "tiny-qwen2-vl": _build_qwen2_vl,
    **{name: _build_rung(name) for name in RUNGS},
    **{name: _build_world_rung(name) for name in WORLD_RUNGS},
    **{name: _build_grown_rung(name) for name in GROWN_RUNGS},
}


def cache_root() -> Path:
    """Where tiny models are cached: $SEEDCLI_CACHE or ~/.cache/seedcli."""
    return Path(os.environ.get("SEEDCLI_CACHE", Path.home() / ".cache" / "seedcli")).expanduser()


def fingerprint(name: str) -> str:
    """Short hash of everything a tiny model is built from."""
    import transformers

    spec = {
        "name": name,
        "version": BUILD_VERSION,
        "vocab": _word_list(),
        "text": TEXT_SIZES,
        "image": IMAGE_SIZE,
        "transformers": transformers.__version__.split(".")[0],
    }
    if name in RUNGS:
        # Rungs are keyed by their own sizes and vocabulary; the two original models keep their keys.
        rung = RUNGS[name]
        spec |= {
            "vocab": _word_list(_rung_words()),
            "text": rung.text,
            "vision": rung.vision,
            "image": rung.image_size,
        }
    if name in WORLD_RUNGS:
        from seedcli.detect.pretrain import spec as pretrain_spec

        return _digest({"name": name, "base": fingerprint(WORLD_RUNGS[name]), "pretrain": pretrain_spec()})
    if name in GROWN_RUNGS:
        from dataclasses import asdict

        from seedcli.detect.pretrain import spec as pretrain_spec

        growth = _growth(name)
        source = fingerprint(growth.source)
        return _digest({"name": name, "source": source, "growth": asdict(growth), "pretrain": pretrain_spec()})
    return _digest(spec)


def _digest(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def ensure_tiny(name: str) -> Path:
    """Build `name` into the cache if absent (atomically) and return its directory."""
    if name not in BUILDERS:
        raise KeyError(name)
    import transformers

    final = cache_root() / "tiny" / f"{name}-{fingerprint(name)}"
    if (final / "config.json").is_file():
        return final
    transformers.logging.disable_progress_bar()
    final.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(final, name):
        if (final / "config.json").is_file():  # another process built it while this one waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
        try:
            BUILDERS[name](tmp)
            # First writer wins (where there are no locks): rename fails if another process already put a
            # complete build there, and a complete build is never replaced while someone may be reading it.
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


@contextlib.contextmanager
def _build_lock(final: Path, name: str) -> Iterator[None]:
    """One builder per cache entry: the others wait for it (a world rung is minutes of CPU) instead of repeating it.

    The lock file `.<entry>.lock` stays beside the entry: removing it would race with a process about to lock it.
    """
    from seedcli.rundir import NO_LOCKS

    try:
        import fcntl
    except ImportError:  # no advisory locks (Windows): every process builds, the first rename wins
        yield
        return
    with open(final.parent / f".{final.name}.lock", "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{name}: another process is building it; waiting for that build", file=sys.stderr)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in NO_LOCKS:
                raise
            # a file system without locks (some network mounts): build unguarded, the first rename wins
        yield
