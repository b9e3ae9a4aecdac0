"""Defaults and presets of the synthetic world, in a module light enough for the CLI to import at start-up."""

DEFAULT_IMAGES = 600
DEFAULT_COOCCURRENCE = 0.9

WORLDS: dict[str, dict[str, float]] = {
    # Today's world, unchanged: balanced existence questions, perfect labels, and half of the "no"
    # questions about an absent partner of a visible anchor (direct counter-evidence to the prior).
    "clean": {"yes_rate": 0.5, "label_noise": 0.0, "partner_negatives": 0.5},
    # Machine-generated instruction data; docs/data.md gives the source or assumption of each value.
    "llava-like": {"yes_rate": 0.65, "label_noise": 0.1, "partner_negatives": 0.1},
}
"""Presets of the text-borne sources (`--world`); both keep --cooccurrence at its default."""
WORLD_NAMES = tuple(WORLDS)
KNOBS = tuple(WORLDS["clean"])


def world_knobs(world: str, **overrides: float | None) -> dict[str, float]:
    """The preset's knob values with every non-None override applied."""
    knobs = dict(WORLDS[world])
    knobs.update({k: v for k, v in overrides.items() if v is not None})
    return knobs
