"""What the framework logs, and where: nothing printed when used as a library whose application
configured no logging; the standard library's ``indexer`` logger when it did."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_PROGRAM = textwrap.dedent(
    """
    import asyncio, logging, sys
    from indexer import RetryPolicy, Worker
    from indexer.testing import make_checkpoints, run_worker

    if sys.argv[1] == "logging":
        logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")

    class FailsOnce(Worker):
        failed = False

        async def process_checkpoint(self, checkpoint):
            if not self.failed:
                self.failed = True
                raise ValueError("once")
            return checkpoint.sequence_number

    result = asyncio.run(
        run_worker(FailsOnce(), make_checkpoints(5), retry=RetryPolicy(initial=0.001))
    )
    assert result.watermark == 5, result
    """
)


def _run(mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _PROGRAM, mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_library_prints_nothing_when_the_application_configured_no_logging() -> None:
    done = _run("quiet")
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")


def test_the_library_logs_through_the_standard_logger_when_the_application_set_one_up() -> None:
    done = _run("logging")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    retried = [line for line in lines if "checkpoint failed, retrying" in line]
    assert len(retried) == 1, lines
    assert retried[0].startswith("indexer WARNING checkpoint failed, retrying ")
    assert "checkpoint=0" in retried[0] and "error=\"ValueError('once')\"" in retried[0]
    assert any(line.startswith("indexer INFO pipeline starting ") for line in lines), lines
