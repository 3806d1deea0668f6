"""An ``s3://`` feed through the real ``indexer`` command, against moto's S3 server started on
127.0.0.1 by the test: every row indexed exactly once, the newest checkpoint found by listing,
the credentials never printed, a missing bucket one line naming it."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from harness import free_port, run_indexer

from indexer.checkpoint import encode_checkpoint
from indexer.sources import SyntheticSource

pytest.importorskip("moto", reason="the object-store tests need moto[server] (the dev extra)")

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"
SECRET = "s3cr3t-never-printed"
COUNT = 80


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    """moto's S3 API on a free port of 127.0.0.1, holding ``s3://feeds/chain/{n}.chk`` for
    ``n < COUNT``; its endpoint."""
    from moto.server import ThreadedMotoServer
    from obstore import put_async
    from obstore.store import from_url

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="test",
            aws_secret_access_key=SECRET,
            region_name="us-east-1",
        )
        client.create_bucket(Bucket="feeds")
        store = from_url(
            "s3://feeds/chain",
            endpoint=endpoint,
            access_key_id="test",
            secret_access_key=SECRET,
            region="us-east-1",
            client_options={"allow_http": True},
        )
        source = SyntheticSource()

        async def upload() -> None:
            await asyncio.gather(
                *(
                    put_async(store, f"{n}.chk", encode_checkpoint(source.checkpoint_at(n)))
                    for n in range(COUNT)
                )
            )

        asyncio.run(upload())
        yield endpoint
    finally:
        server.stop()


def write_config(tmp_path: Path, endpoint: str, feed: str = "s3://feeds/chain") -> Path:
    with EXAMPLE.open("rb") as file:
        data = tomllib.load(file)
    data["source"] = {
        "feed": feed,
        "follow": False,
        "retry_initial": 0.01,
        "retry_max_delay": 0.05,
        "options": {
            "endpoint": endpoint,
            "region": "us-east-1",
            "access_key_id": "test",
            "secret_access_key": SECRET,
            "allow_http": True,
        },
    }
    data["progress"]["store"] = f"sqlite:{tmp_path / 'index.db'}"
    data["metrics"] = {"enabled": False}
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def rows(tmp_path: Path) -> list[tuple[int, str]]:
    conn = sqlite3.connect(tmp_path / "index.db")
    try:
        return list(conn.execute("SELECT checkpoint, digest FROM transactions"))
    finally:
        conn.close()


def output(result: Any) -> str:
    return result.stdout + result.stderr


def test_an_s3_feed_is_indexed_exactly_once_and_its_secret_never_printed(
    tmp_path: Path, s3: str
) -> None:
    config = write_config(tmp_path, s3)
    shown = run_indexer("config", "show", "-c", config)
    assert shown.returncode == 0, shown.stderr
    assert 'secret_access_key = "***"' in shown.stdout
    checked = run_indexer("config", "check", "-c", config)
    assert checked.returncode == 0, checked.stderr
    assert "source.feed: s3://feeds/chain (reached: checkpoint 0 is there)" in checked.stdout

    result = run_indexer("run", "-c", config, "--log-format", "json", "--last-checkpoint", 79)
    assert result.returncode == 0, result.stderr
    indexed = rows(tmp_path)
    source = SyntheticSource()
    expected = [(n, tx.digest) for n in range(COUNT) for tx in source.checkpoint_at(n).transactions]
    assert sorted(indexed) == sorted(expected)  # every row, once

    status = run_indexer("status", "-c", config, "--json")
    assert status.returncode == 0, status.stderr
    [row] = json.loads(status.stdout)["pipelines"]
    assert (row["watermark"], row["feed_latest"], row["lag"]) == (80, 79, 0)
    for printed in (shown, checked, result, status):
        assert SECRET not in output(printed)


def test_a_bucket_that_does_not_exist_is_one_line_naming_it(tmp_path: Path, s3: str) -> None:
    config = write_config(tmp_path, s3, feed="s3://no-such-bucket/chain")
    checked = run_indexer("config", "check", "-c", config)
    assert checked.returncode == 2
    [line] = checked.stderr.splitlines()
    assert "source.feed: the feed refused a request: the bucket or container does not exist" in (
        line
    )
    assert "s3://no-such-bucket/chain/0.chk" in line
    result = run_indexer("run", "-c", config, "--last-checkpoint", 9)
    assert result.returncode == 1
    [line] = [x for x in result.stderr.splitlines() if not x.startswith("{")]
    assert line.startswith("indexer: error: the feed refused a request: the bucket")
    for printed in (checked, result):
        assert SECRET not in output(printed)
