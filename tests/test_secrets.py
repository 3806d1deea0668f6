"""A password in a connection string is never printed: every command, run through the real
binary with a password in each place one can go (``progress.store``, ``scale.claims``, a
sink's ``dsn`` option, a mistyped store), succeeding or failing, prints it masked or not at
all, in its output, its logs and its errors (``mask_dsn``, one function for all of them).

The local server trusts its connections, so a DSN carrying a password still connects: the runs
that should work do, and log what they do."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import structlog
import tomli_w
from harness import run_indexer

from indexer._dsn import mask_dsn
from indexer._log import log
from indexer.cli.logs import configure_logging

PASSWORD = "S3cretPW"
LAST = 19  # runs index checkpoints 0..19
COLUMNS = {
    "checkpoint": "BIGINT NOT NULL",
    "digest": "TEXT NOT NULL",
    "sender": "TEXT NOT NULL",
    "event_count": "INTEGER NOT NULL",
    "timestamp_ms": "BIGINT NOT NULL",
}


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h:5433/db", "postgresql://u@h:5433/db"),
        (
            "postgresql://h/db?sslmode=require&password=pw",
            "postgresql://h/db?sslmode=require&password=***",
        ),
        ("host=h user=u password=pw dbname=d", "host=h user=u password=*** dbname=d"),
        ("host=h password='p w' dbname=d", "host=h password=*** dbname=d"),
        ("postgresq://u:pw@h/db", "postgresq://u:***@h/db"),  # a mistyped scheme
        ("postgresql:/u:pw@h/db", "postgresql:/u:***@h/db"),
        (
            "X({'dsn': 'postgresql://u:pw@h/db', 'n': 5}) failed: boom",
            "X({'dsn': 'postgresql://u:***@h/db', 'n': 5}) failed: boom",
        ),
        ("held by host:4242 since 12:01:03", "held by host:4242 since 12:01:03"),
        ("sqlite:demo/index.db", "sqlite:demo/index.db"),
    ],
)
def test_mask_dsn_finds_passwords_anywhere_in_a_string(text: str, masked: str) -> None:
    assert mask_dsn(text) == masked


def test_mask_dsn_walks_dicts_and_lists() -> None:
    value = {"dsn": "postgresql://u:pw@h/db", "password": "pw", "more": [("postgres://a:b@c",)]}
    assert mask_dsn(value) == {
        "dsn": "postgresql://u:***@h/db",
        "password": "***",
        "more": [("postgres://a:***@c",)],
    }


def test_log_lines_mask_passwords_in_every_field_and_traceback() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    try:
        try:
            raise ValueError(f"cannot reach postgresql://u:{PASSWORD}@h/db")
        except ValueError as exc:
            log.error(
                "commit failed",
                error=repr(exc),
                options={"dsn": f"host=h password={PASSWORD}"},
                exc_info=exc,
            )
    finally:
        structlog.reset_defaults()
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert PASSWORD not in line
    assert record["error"] == "ValueError('cannot reach postgresql://u:***@h/db')"
    assert record["options"] == {"dsn": "host=h password=***"}
    assert "ValueError: cannot reach postgresql://u:***@h/db" in record["exception"]


# -- every command, end to end ---------------------------------------------------------------


def with_password(dsn: str, port: int | None = None) -> str:
    """The test server's DSN with ``PASSWORD`` (and another ``port``)."""
    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}:{PASSWORD}@{host}:{port or parts.port or 5432}"
    return urlunsplit(parts._replace(netloc=netloc))


def cases(dsn: str, schema: str, tmp: Path, feed: Path) -> dict[str, dict[str, Any]]:
    """Configs by name, each with a password where one can go; ``ok`` when its run works."""
    secret = with_password(dsn)
    host, port = urlsplit(dsn).hostname, urlsplit(dsn).port or 5432
    keywords = f"host={host} port={port} user=postgres password={PASSWORD} dbname=test"

    def config(name: str, **tables: Any) -> dict[str, Any]:
        reducer = tables.pop("reducer", None)
        pipeline: dict[str, Any] = {"worker": "workers:TransactionExtractor"}
        if reducer is not None:
            pipeline["reducer"] = {"class": "reducers:PostgresSink", "options": reducer}
        return {
            "source": {"feed": str(feed)},
            "progress": {"store": f"sqlite:{tmp / name}.db"},
            "metrics": {"enabled": False},
            "logging": {"level": "debug"},
            "pipelines": {name: pipeline},
            **tables,
        }

    def sink(**options: Any) -> dict[str, Any]:
        return {"table": "secret_rows", "columns": COLUMNS, "schema": schema, **options}

    return {
        "store": config("store", progress={"store": secret, "schema": schema}),
        "claims": config("claims", progress={"schema": schema}, scale={"claims": secret}),
        "sink_dsn": config("sink_dsn", reducer=sink(dsn=secret)),
        "sink_error": config("sink_error", reducer={"table": "x", "columns": 5, "dsn": secret}),
        "bad_scheme": config("bad_scheme", progress={"store": secret.replace("ql://", "q://")}),
        "bad_claims": config("bad_claims", scale={"claims": secret.replace("://", ":/")}),
        "keyword_store": config("keyword_store", progress={"store": keywords}),
        "unreachable": config(
            "unreachable",
            progress={"store": with_password(dsn, port=1), "schema": schema},
        ),
    }


#: The cases whose run works (the others fail, and say why without the password).
WORKING = {"store", "claims", "sink_dsn"}


def commands(name: str, path: Path) -> list[list[Any]]:
    return [
        ["config", "show", "-c", path],
        ["config", "check", "-c", path],
        ["run", "-c", path, "--last-checkpoint", LAST],
        ["status", "-c", path],
        ["status", "--json", "-c", path],
        ["reset", "-c", path, "--pipeline", name, "--to", "0"],  # without --force: a look
    ]


def test_no_command_prints_a_password(
    tmp_path: Path, postgres_dsn: str, pg_schema: str, feed20: Path
) -> None:
    configs = cases(postgres_dsn, pg_schema, tmp_path, feed20)

    def run_case(name: str) -> list[tuple[list[str], int, str, str]]:
        path = tmp_path / f"{name}.toml"
        path.write_text(tomli_w.dumps(configs[name]), encoding="utf-8")
        results = []
        for args in commands(name, path):
            done = run_indexer(*args, timeout=60)
            results.append(([str(a) for a in args[:2]], done.returncode, done.stdout, done.stderr))
        return results

    with ThreadPoolExecutor(max_workers=3) as pool:
        outcomes = dict(zip(configs, pool.map(run_case, configs), strict=True))
    leaks = [
        (name, " ".join(args), line)
        for name, results in outcomes.items()
        for args, _, stdout, stderr in results
        for line in (stdout + stderr).splitlines()
        if PASSWORD in line
    ]
    assert not leaks, "\n".join(map(str, leaks))
    for name, results in outcomes.items():
        by_command = {" ".join(args): (code, out, err) for args, code, out, err in results}
        run_code, _, run_log = by_command["run -c"]
        if name in WORKING:  # it did its work, logging it, and showed the DSN masked
            assert run_code == 0, (name, run_log)
            assert "postgres:***@" in by_command["config show"][1], (name, by_command)
            assert by_command["config check"][0] == 0, (name, by_command["config check"])
            report = json.loads(by_command["status --json"][1])
            assert report["pipelines"][0]["watermark"] == LAST + 1, (name, report)
        else:  # it failed, saying why in one line
            assert run_code in (1, 2), (name, run_log)
            assert "indexer: error: " in run_log, (name, run_log)


@pytest.fixture(scope="module")
def feed20(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A feed of checkpoints 0..19."""
    directory = tmp_path_factory.mktemp("feed") / "feed"
    done = run_indexer("generate", "--out", directory, "--count", LAST + 1)
    assert done.returncode == 0, done.stderr
    return directory
