"""The project written by ``scaffold_project`` (behind ``indexer init``) works as generated."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from indexer.cli.config import import_object, load_config
from indexer.cli.scaffold import project_name, scaffold_project
from indexer.errors import ConfigurationError
from indexer.sources import SyntheticSource
from indexer.testing import run_worker

EXPECTED_FILES = {
    "pyproject.toml",
    "config.toml",
    "README.md",
    ".gitignore",
    "tests/test_worker.py",
    "{name}/__init__.py",
    "{name}/worker.py",
    "{name}/reducer.py",
}


def relative(paths: list[Path], root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in paths}


def test_writes_every_file(tmp_path: Path) -> None:
    project = tmp_path / "new" / "my_indexer"
    written = scaffold_project(project)
    assert relative(written, project) == {f.format(name="my_indexer") for f in EXPECTED_FILES}
    assert all(path.is_file() for path in written)
    assert {p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()} == (
        relative(written, project)
    )
    readme = (project / "README.md").read_text()
    assert 10 <= len(readme.splitlines()) <= 20
    assert "pip install -e '.[dev]'" in readme and "indexer run -c config.toml" in readme


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("My-Indexer", "my_indexer"),
        ("9x", "x_9x"),
        ("swaps", "swaps"),
        ("a b.c", "a_b_c"),
        ("class", "class_"),
    ],
)
def test_normalises_names(raw: str, expected: str) -> None:
    assert project_name(raw) == expected


def test_name_defaults_to_the_directory(tmp_path: Path) -> None:
    project = tmp_path / "My-Indexer"
    written = scaffold_project(project)
    assert (project / "my_indexer" / "worker.py") in written
    assert 'name = "my_indexer"' in (project / "pyproject.toml").read_text()


def test_explicit_name_is_normalised(tmp_path: Path) -> None:
    scaffold_project(tmp_path / "proj", name="9x")
    assert (tmp_path / "proj" / "x_9x" / "worker.py").is_file()


@pytest.mark.parametrize("raw", ["indexer", "json", "---"])
def test_refuses_unusable_names(tmp_path: Path, raw: str) -> None:
    with pytest.raises(ConfigurationError):
        scaffold_project(tmp_path / "proj", name=raw)
    assert not (tmp_path / "proj").exists()


def test_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    project = tmp_path / "taken"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    with pytest.raises(ConfigurationError, match="taken"):
        scaffold_project(project)
    assert [p.name for p in project.iterdir()] == ["notes.txt"]


def test_accepts_an_existing_empty_directory(tmp_path: Path) -> None:
    project = tmp_path / "empty"
    project.mkdir()
    assert len(scaffold_project(project)) == len(EXPECTED_FILES)


def test_generated_config_loads(tmp_path: Path) -> None:
    project = tmp_path / "swaps"
    scaffold_project(project)
    config = load_config(project / "config.toml")
    assert config.source.kind == "synthetic"
    assert (config.source.seed, config.source.count) == (1, 1000)
    assert config.progress.store == f"sqlite:{project / 'swaps.db'}"  # beside the config file
    pipeline = config.pipelines["swaps"]
    assert pipeline.worker == "swaps.worker:EventCounter"
    assert pipeline.concurrency == 4
    assert pipeline.reducer is not None
    assert pipeline.reducer.cls == "swaps.reducer:EventTotals"


def test_generated_test_suite_passes(tmp_path: Path) -> None:
    project = tmp_path / "scaffold_suite"
    scaffold_project(project)
    env = {**os.environ, "PYTHONPATH": str(project)}
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project / "tests")],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "2 passed" in output, output
    assert "warning" not in output.lower(), output


@pytest.fixture
def importable(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A scaffolded project on sys.path; its modules are forgotten afterwards."""
    name = "scaffold_import_check"
    project = tmp_path / name
    scaffold_project(project)
    sys.path.insert(0, str(project))
    try:
        yield name, project
    finally:
        sys.path.remove(str(project))
        for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
            del sys.modules[module]


async def test_generated_worker_and_reducer_count_events(importable: tuple[str, Path]) -> None:
    name, project = importable
    config = load_config(project / "config.toml")
    pipeline = config.pipelines[name]
    assert pipeline.reducer is not None
    worker_cls: Any = import_object(pipeline.worker, "x")
    reducer_cls: Any = import_object(pipeline.reducer.cls, "x")
    source = SyntheticSource(seed=1)
    checkpoints = [source.checkpoint_at(n) for n in range(20)]
    direct = [
        Counter(event.type for tx in cp.transactions for event in tx.events) for cp in checkpoints
    ]

    worker = worker_cls()
    assert worker.pipeline_name == name
    result = await run_worker(worker, checkpoints, concurrency=4)
    assert result.watermark == 20
    assert result.messages == [dict(counts) for counts in direct]

    reducer = reducer_cls(max_batch_size=pipeline.reducer.max_batch_size, max_batch_age=0.01)
    await run_worker(worker_cls(), checkpoints, reducer=reducer, concurrency=4)
    assert reducer.totals == sum(direct, Counter())
    assert reducer.checkpoints == 20


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_fresh_virtualenv_installs_the_framework_and_the_scaffold_and_its_tests_pass(
    tmp_path: Path,
) -> None:
    """As the scaffold's README says: the framework from this checkout into a new virtualenv,
    then the generated project, which depends on the framework's distribution name (a name
    the package index must not resolve to another project), then its own tests."""
    repo = Path(__file__).resolve().parent.parent
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"

    def run(*args: str | Path, cwd: Path | None = None) -> str:
        done = subprocess.run(
            [str(arg) for arg in args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith(("INDEXER_", "PYTHON"))},
        )
        assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        return done.stdout

    run(python, "-m", "pip", "install", "--quiet", repo)
    typed = "import indexer, pathlib; print((pathlib.Path(indexer.__file__).parent / 'py.typed'))"
    assert Path(run(python, "-c", typed).strip()).is_file()  # installed, not the checkout's
    run(venv / "bin" / "indexer", "init", tmp_path / "swaps")
    run(python, "-m", "pip", "install", "--quiet", "-e", ".[dev]", cwd=tmp_path / "swaps")
    installed = run(python, "-m", "pip", "list", "--format=json")
    assert '"checkpoint-indexer"' in installed
    assert '"indexer"' not in installed  # the unrelated project of that name
    assert "passed" in run(python, "-m", "pytest", "-q", cwd=tmp_path / "swaps")
