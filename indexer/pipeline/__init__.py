"""A pipeline's stages: the processor (worker tasks) and the committer (batches, watermark)."""

from .pool import WorkerPool

__all__ = ["WorkerPool"]
