"""seedcli: Self-Evolving Distillation (SEED) for vision-language models, as a command-line tool."""

__version__ = "0.1.0"
