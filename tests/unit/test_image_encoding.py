"""`ImageEncoding`: an image's processor output reused for further prompts, and the check that gates it."""

from __future__ import annotations

from seedcli.evals.generation import _image_encoding
from seedcli.models.chat import IGNORE, Encoded

PLACEHOLDER = 9
VISION = {"pixel_values": "the image's tensors"}


def _processed(ids: list[int], types: list[int]) -> Encoded:
    """What a processor gives: the placeholder expanded, one token input per token."""
    return Encoded(ids, [IGNORE] * len(ids), {"mm_token_type_ids": types}, VISION)


def test_a_prompt_is_encoded_as_the_processor_would_encode_it() -> None:
    # text ids [1, 9, 2, 3]: the processor expands the placeholder 9 into [8, 9, 9, 7].
    first = _processed([1, 8, 9, 9, 7, 2, 3], [0, 1, 1, 1, 1, 0, 0])
    found = _image_encoding("image", PLACEHOLDER, [1, 9, 2, 3], first)
    assert found is not None
    assert found.expansion == (8, 9, 9, 7) and found.vision is VISION
    other = found.encode([1, 9, 5, 6, 4])
    assert other.input_ids == [1, 8, 9, 9, 7, 5, 6, 4]
    assert other.token_inputs == {"mm_token_type_ids": [0, 1, 1, 1, 1, 0, 0, 0]}
    assert other.labels == [IGNORE] * 8 and other.vision is VISION
    # A prompt without exactly one placeholder goes back to the processor.
    assert found.encode([1, 5, 6]) is None
    assert found.encode([1, 9, 5, 9]) is None


def test_no_reuse_when_the_tokenizer_and_the_processor_disagree() -> None:
    first = _processed([1, 9, 9, 9, 2, 3], [0, 1, 1, 1, 0, 0])
    assert _image_encoding("image", PLACEHOLDER, [1, 9, 2, 3], first) is not None
    # The tokenizer alone adds a token the processor's call does not (e.g. a second BOS).
    assert _image_encoding("image", PLACEHOLDER, [0, 1, 9, 2, 3], first) is None
    # The text around the image is tokenized differently.
    assert _image_encoding("image", PLACEHOLDER, [1, 9, 2, 4], first) is None
    # No placeholder, two placeholders, or no known placeholder token.
    assert _image_encoding("image", PLACEHOLDER, [1, 2, 3], first) is None
    assert _image_encoding("image", PLACEHOLDER, [9, 1, 9, 2, 3], first) is None
    assert _image_encoding("image", None, [1, 9, 2, 3], first) is None


def test_no_reuse_when_a_token_input_is_not_a_function_of_image_or_text() -> None:
    # Text tokens with different values: a new prompt's values could not be told.
    first = _processed([1, 9, 9, 9, 2, 3], [0, 1, 1, 1, 0, 2])
    assert _image_encoding("image", PLACEHOLDER, [1, 9, 2, 3], first) is None
