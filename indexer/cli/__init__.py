"""The ``indexer`` command: the click commands (``main.py`` with ``run``, ``commands.py`` with
the others, loaded when named) and what they build and run.

``config.py`` reads and validates the TOML file, ``build.py`` turns it into the library's
objects, ``run.py`` runs them (``processes.py`` for ``--processes N``), ``status.py`` reads
and resets a job's saved state, ``display.py`` draws progress bars, ``logs.py`` sets up
structlog, ``scaffold.py`` writes ``indexer init``'s project and ``bench/`` is ``indexer bench``.
"""

from .main import main

__all__ = ["main"]
