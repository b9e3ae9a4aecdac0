"""`python -m seedcli` runs the same app as the `seed` console script."""

from seedcli.cli.app import main

if __name__ == "__main__":
    main()
