"""``python -m indexer``: the ``indexer`` command (how ``--processes`` starts its children)."""

from .cli import main

main()
