"""One frozen dataclass per command: the single source of truth for flags, defaults and help."""
