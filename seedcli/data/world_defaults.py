"""Defaults of the synthetic world, in a module light enough for the CLI to import at start-up."""

DEFAULT_IMAGES = 600
DEFAULT_COOCCURRENCE = 0.9
