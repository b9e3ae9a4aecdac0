"""An image-only Qwen2-VL processor, for machines without torchvision.

The stock `Qwen2VLProcessor` also builds a video processor, which needs torchvision; seedcli never
feeds video, so this processor keeps only the image processor and tokenizer, and otherwise behaves
like the stock one (same token expansion, same `mm_token_type_ids`). It is registered with
`AutoProcessor` under its own name, so directories saved with it load through
`AutoProcessor.from_pretrained` like any checkpoint.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoProcessor, PretrainedConfig
from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """Qwen2-VL processor without a video processor (needs no torchvision)."""

    def __init__(
        self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any
    ) -> None:
        self.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
        self.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
        self.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(
            self.image_token
        )
        self.video_token_id = getattr(tokenizer, "video_token_id", None) or tokenizer.convert_tokens_to_ids(
            self.video_token
        )
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class _RegistrationKey(PretrainedConfig):
    """A config class that exists only to key the AutoProcessor registration (never a model)."""

    model_type = "seedcli_qwen2_vl_image_only"


AutoProcessor.register(_RegistrationKey, Qwen2VLImageOnlyProcessor, exist_ok=True)
