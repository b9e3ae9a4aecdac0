"""Forward passes that compute logits only at supervised positions (never B x L x V)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from seedcli.models.chat import IGNORE


def unwrap(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (adapter layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """Everything the model takes (labels removed: losses are computed by seedcli)."""
    return {k: v for k, v in batch.items() if k != "labels"}


@dataclass(frozen=True)
class Supervised:
    """Where the supervised tokens are: positions t whose next token t+1 is an assistant token."""

    mask: Any  # bool [B, L-1]
    targets: Any  # long [N]
    sample_index: Any  # long [N], which sample each token belongs to

    @property
    def count(self) -> int:
        """N, the number of supervised tokens."""
        return int(self.targets.numel())


def supervised(labels: Any) -> Supervised:
    """Positions predicting supervised labels (causal shift by one)."""
    import torch

    shifted = labels[:, 1:]  # [B, L-1]
    mask = shifted != IGNORE
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(shifted)
    return Supervised(mask=mask, targets=shifted[mask], sample_index=rows[mask])


def hidden_states(model: Any, inputs: dict[str, Any]) -> Any:
    """Last hidden states [B, L, H] of the multimodal backbone (no LM head)."""
    base = unwrap(model)
    out = base.model(**inputs, use_cache=False, return_dict=True)
    return out.last_hidden_state


def supervised_logits(model: Any, inputs: dict[str, Any], mask: Any) -> Any:
    """Logits [N, V] at supervised positions only; `mask` is `Supervised.mask` ([B, L-1])."""
    hidden = hidden_states(model, inputs)  # [B, L, H]
    picked = hidden[:, :-1][mask]  # [N, H]
    return unwrap(model).get_output_embeddings()(picked)  # [N, V]


def doubled(inputs: dict[str, Any], pixels_second: Any, pixel_key: str = "pixel_values") -> dict[str, Any]:
    """One batch of 2B: the inputs with their own pixels, then the same inputs with `pixels_second`."""
    import torch

    out: dict[str, Any] = {}
    for key, value in inputs.items():
        if key == pixel_key:
            out[key] = torch.cat([value, pixels_second], dim=0)
        else:
            out[key] = torch.cat([value, value], dim=0)
    return out
