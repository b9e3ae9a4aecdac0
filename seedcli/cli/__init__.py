"""The `seed` command line: thin Typer wrappers over the library."""
