"""Run prefdata from a source checkout: `python cli.py generate ...` (same as the `prefdata` command)."""

from prefdata.cli import main

if __name__ == "__main__":
    main()
