"""Command groups of the ``lapeval`` CLI (see lapeval/cli.py)."""
