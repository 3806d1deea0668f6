"""README.md's commands work as written: its shell commands, taken from its code blocks, run in
order in a fresh directory holding what the tutorial has the reader write (``swaps.py`` and
``swaps.toml``, from the README too) beside the repository's ``Makefile`` and
``config.example.toml``, with the tests' environment activated and nothing on PYTHONPATH.

A command runs to its end and must exit 0, unless it is listed below: run in the background
while the commands that need it running run (then stopped with SIGTERM: exit 0), or skipped
with a reason. A new command in the README is run like the others."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from harness import Background

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
#: The environment the tests run in: ``make`` runs its ``indexer`` (``VENV``).
VENV = Path(sys.executable).parent.parent

#: Commands not run, and why.
SKIPPED = {
    "make test": "the test suite itself",
    "indexer run -c swaps.toml --last-checkpoint 19999 --claims postgresql://indexer@db/idx": (
        "needs a PostgreSQL server named db (another machine); how --claims names the store "
        "is test_the_claims_flag_names_the_progress_store"
    ),
}
#: Commands that run until stopped: in the background, stopped after the ones that need them.
BACKGROUND = {"indexer run -c swaps.toml"}
#: Commands that need a background command running (its metrics port is the test's own).
WHILE_RUNNING = {"curl -s 127.0.0.1:9184/metrics | grep ^indexer_"}
README_PORT = "9184"


def shell_commands(text: str) -> list[str]:
    """The commands of ``text``'s ```` ```sh ```` blocks and of its indented code blocks (lines
    starting with ``indexer ``), in order, without their comments."""
    commands: list[str] = []
    fence: str | None = None
    for line in text.splitlines():
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
            continue
        if fence == "sh":
            command = re.sub(r"\s+#\s.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(command)
        elif fence is None and line.startswith("    indexer "):
            commands.append(line.strip())
    return commands


def code_block(text: str, language: str, containing: str) -> str:
    """The first ```` ```language ```` block of ``text`` that contains ``containing``."""
    for match in re.finditer(rf"^```{language}\n(.*?)^```$", text, re.MULTILINE | re.DOTALL):
        if containing in match.group(1):
            return match.group(1)
    raise AssertionError(f"README.md has no {language} block with {containing!r}")


def test_the_commands_treated_apart_are_the_readmes() -> None:
    commands = shell_commands(README.read_text(encoding="utf-8"))
    assert "make demo" in commands and "indexer run -c swaps.toml" in commands, commands
    assert not [c for c in commands if "PYTHONPATH" in c]  # the config's directory is enough
    unclassified = set(SKIPPED) | BACKGROUND | WHILE_RUNNING
    assert unclassified <= set(commands), unclassified - set(commands)


def test_the_claims_flag_names_the_progress_store(tmp_path: Path) -> None:
    """The README's scale-out line: ``--claims`` over a file whose store is SQLite is the
    store too (flags win over the file), where it used to be refused."""
    text = README.read_text(encoding="utf-8")
    (tmp_path / "swaps.toml").write_text(code_block(text, "toml", "[pipelines.swaps]"))
    claims = "postgresql://indexer:pw@db/idx"
    program = Background.indexer(
        "config", "show", "-c", "swaps.toml", "--claims", claims, cwd=tmp_path
    )
    assert program.finish() == 0, program.describe()
    shown = tomllib.loads(program.stdout_text)
    assert (
        shown["progress"]["store"] == shown["scale"]["claims"] == "postgresql://indexer:***@db/idx"
    )


def free_port_pair() -> int:
    """A port free on 127.0.0.1 whose next one is free too (``--processes 2``)."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            try:
                with socket.socket() as second:
                    second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two free ports in a row")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not (shutil.which("make") and shutil.which("curl")), reason="make, curl")
def test_every_readme_command_works_as_written(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    (tmp_path / "swaps.py").write_text(code_block(text, "python", "class SwapCounter"))
    (tmp_path / "swaps.toml").write_text(code_block(text, "toml", "[pipelines.swaps]"))
    for name in ("Makefile", "config.example.toml"):
        shutil.copy(REPO / name, tmp_path)
    port = free_port_pair()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INDEXER_", "PYTHONPATH"))}
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"  # ". .venv/bin/activate"
    env["INDEXER_METRICS_ADDRESS"] = f"127.0.0.1:{port}"  # not 9184: other runs may hold it

    def shell(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )

    running: Background | None = None
    ran = []
    for command in shell_commands(text):
        if command in SKIPPED:
            continue
        ran.append(command)
        if command in BACKGROUND:
            running = Background(["bash", "-c", f"exec {command}"], cwd=tmp_path, env=env)
            running.wait_for_event("caught up with the feed", timeout=120)
            continue
        if command == "make demo":  # with the tests' environment, not a new one (-o install)
            command = f"make -o install demo VENV={shlex.quote(str(VENV))}"
        if command in WHILE_RUNNING:
            assert running is not None and running.returncode is None, command
            command = command.replace(README_PORT, str(port))
        done = shell(command)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        if command.startswith("curl"):
            assert "indexer_watermark{" in done.stdout, done.stdout
        if running is not None and command.startswith("curl"):  # 4. Stop it: exit code 0
            assert running.stop(signal.SIGTERM, timeout=60) == 0, running.describe()
            running = None
    assert running is None, "a background command was never stopped"
    assert len(ran) >= 7, ran
