"""The KV-cache keyword is chosen by what the model's forward accepts, not by a version string."""

from __future__ import annotations

from seedcli.evals.generation import cache_argument


class _New:
    def forward(self, input_ids=None, cache=None, **kwargs):  # noqa: ANN001, ANN003, ANN201
        return None


class _Old:
    def forward(self, input_ids=None, past_key_values=None, **kwargs):  # noqa: ANN001, ANN003, ANN201
        return None


def test_the_cache_keyword_follows_the_forward_signature() -> None:
    assert cache_argument(_New()) == "cache"
    assert cache_argument(_Old()) == "past_key_values"
