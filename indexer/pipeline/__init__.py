"""A pipeline and its stages, one module each: ``pool.py`` (what a user configures),
``run.py`` (one run, wiring the stages), ``watermark.py`` (the in-flight window and the
contiguous prefix), ``processor.py`` (the worker tasks) and ``committer.py`` (batches, commits,
the saved watermark)."""

from .pool import WorkerPool
from .run import PipelineRun

__all__ = ["PipelineRun", "WorkerPool"]
