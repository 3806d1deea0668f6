"""The examples of ``deploy/`` work with the indexer as it is: the alerting rules pass
``promtool check rules``, every ``indexer_*`` name the rules and the Grafana dashboard use is
exposed by a real ``indexer run``, the dashboard has its variables and a query in every panel,
and the Kubernetes manifests probe ``/healthz`` and ``/readyz`` on the metrics port."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from harness import Background, free_port, promtool, run_indexer

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "indexer-dashboard.json"
DEPLOYMENT = DEPLOY / "kubernetes" / "deployment.yaml"
CONFIGMAP = DEPLOY / "kubernetes" / "configmap.yaml"
METRIC = re.compile(r"\bindexer_[a-z_]+\b")
FEED_SIZE = 300


def get(port: int, path: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return str(reply.read().decode())
    except (urllib.error.URLError, OSError):  # not serving (yet)
        return None


def alert_exprs() -> list[str]:
    """The ``expr:`` of every rule in alerts.yml (each on one line there)."""
    return re.findall(r"^\s+expr:\s*(.+?)\s*$", ALERTS.read_text(), re.MULTILINE)


def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text())
    assert isinstance(loaded, dict)
    return loaded


def panels() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        if panel.get("type") == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel.get("targets", [])]


def used_metrics() -> set[str]:
    names = {name for expr in alert_exprs() + dashboard_exprs() for name in METRIC.findall(expr)}
    return names


def exposed_names(exposition: str) -> set[str]:
    """Every name a query may use: the families of the ``# TYPE`` lines (a counter with and
    without ``_total``, a histogram's ``_bucket``/``_sum``/``_count``) and every sample name."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "counter":
                names |= {name.removesuffix("_total"), name.removesuffix("_total") + "_total"}
            elif kind in ("histogram", "summary"):
                names |= {f"{name}_{suffix}" for suffix in ("bucket", "sum", "count")}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_the_alerting_rules_pass_promtool() -> None:
    check = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 5 rules found" in check.stdout, check.stdout


def test_the_alerts_are_the_five_the_runbook_names_with_severity_and_pipeline() -> None:
    text = ALERTS.read_text()
    alerts = re.findall(r"^\s+- alert:\s*(\S+)", text, re.MULTILINE)
    assert alerts == [
        "IndexerLagHigh",
        "IndexerHalted",
        "IndexerNoCommit",
        "IndexerDeadLettersRising",
        "IndexerDown",
    ]
    assert len(re.findall(r"^\s+severity:\s*(warning|critical)\s*$", text, re.MULTILINE)) == 5
    # every rule about a pipeline names it in its description
    assert text.count("{{ $labels.pipeline }}") >= 2 * 4
    exprs = alert_exprs()
    assert len(exprs) == 5, exprs
    assert exprs[0] == "indexer_lag_seconds > 300"
    assert "indexer_dead_letters_total" in exprs[3]


def test_the_dashboard_has_its_variables_and_a_query_in_every_panel() -> None:
    board = dashboard()
    assert isinstance(board.get("schemaVersion"), int) and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"datasource", "pipeline"}, set(variables)
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    pipeline = variables["pipeline"]
    assert pipeline["type"] == "query"
    query = pipeline["query"]
    query = query["query"] if isinstance(query, dict) else query
    assert query == "label_values(indexer_watermark, pipeline)"
    assert pipeline["datasource"]["uid"] == "${datasource}"
    found = panels()
    assert len(found) >= 9, len(found)
    ids = [panel["id"] for panel in found]
    assert len(set(ids)) == len(ids), ids
    for panel in found:
        targets = panel.get("targets")
        assert targets and all(t.get("expr", "").strip() for t in targets), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    exprs = " ".join(dashboard_exprs())
    for wanted in (
        "rate(indexer_checkpoints_processed_total",
        "indexer_lag_checkpoints",
        "indexer_lag_seconds",
        "indexer_watermark{",
        "histogram_quantile(0.5, sum by (le, pipeline) (rate(indexer_commit_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, pipeline) (rate(indexer_commit_seconds_bucket",
        "indexer_reducer_batch_messages",
        "indexer_retries_total",
        "indexer_dead_letters_total",
        "indexer_pipeline_halted",
    ):
        assert wanted in exprs, wanted


def test_every_metric_the_alerts_and_the_dashboard_use_is_exposed_by_a_real_run(
    tmp_path: Path,
) -> None:
    used = used_metrics()
    assert {"indexer_lag_seconds", "indexer_commit_seconds_bucket"} <= used, used  # parsed
    feed = tmp_path / "feed"
    generated = run_indexer(
        "generate", "--out", feed, "--count", FEED_SIZE, "--seed", "1", cwd=tmp_path
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    port = free_port()
    run = Background.indexer(
        "run",
        "-c",
        REPO / "config.example.toml",
        "--feed",
        feed,
        "--store",
        f"sqlite:{tmp_path / 'index.db'}",
        "--metrics-address",
        f"127.0.0.1:{port}",
        "--last-checkpoint",
        10**9,  # keeps tailing the feed: still serving once caught up
        "--no-progress",
        cwd=tmp_path,
    )

    def caught_up() -> str | None:
        text = get(port, "/metrics")
        if (
            text is None
            or f'indexer_watermark{{pipeline="transactions"}} {FEED_SIZE}.0' not in text
        ):
            return None
        return text if "indexer_lag_seconds{" in text else None

    exposition = run.wait_until(f"watermark {FEED_SIZE} on /metrics", caught_up)
    assert run.stop() == 0, run.describe()
    exposed = exposed_names(exposition)
    assert "indexer_watermark" in exposed and "indexer_commit_seconds_bucket" in exposed
    missing = sorted(used - exposed)
    assert not missing, f"deploy/ uses metrics a run does not expose: {missing}"


def test_the_kubernetes_manifests_probe_healthz_and_readyz_on_the_metrics_port() -> None:
    deployment = DEPLOYMENT.read_text()
    configmap = CONFIGMAP.read_text()
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        yaml = None
    if yaml is not None:
        (spec,) = [d for d in yaml.safe_load_all(deployment) if d]
        assert spec["kind"] == "Deployment"
        pod = spec["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["ports"][0]["containerPort"] == 9184
        assert pod["terminationGracePeriodSeconds"] >= 30
        (cm,) = [d for d in yaml.safe_load_all(configmap) if d]
        assert cm["kind"] == "ConfigMap" and "config.toml" in cm["data"]
        return
    # Without PyYAML: the probes read line by line, each followed by its path and port.
    probes = dict(
        re.findall(
            r"^\s+(livenessProbe|readinessProbe):\s*\n\s+httpGet:\s*\n\s+path:\s*(\S+)\s*\n",
            deployment,
            re.MULTILINE,
        )
    )
    assert probes == {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}, probes
    assert re.search(r"^\s+containerPort:\s*9184\s*$", deployment, re.MULTILINE)
    assert re.search(r"^\s+- 0\.0\.0\.0:9184\s*$", deployment, re.MULTILINE)
    assert len(re.findall(r"^\s+port:\s*metrics\s*$", deployment, re.MULTILINE)) == 2
    assert re.search(r"^\s+- name: metrics\s*$", deployment, re.MULTILINE)
    grace = re.search(r"^\s+terminationGracePeriodSeconds:\s*(\d+)\s*$", deployment, re.MULTILINE)
    assert grace and int(grace.group(1)) >= 30
    assert re.search(r"^kind: Deployment\s*$", deployment, re.MULTILINE)
    assert re.search(r"^kind: ConfigMap\s*$", configmap, re.MULTILINE)
    # the command and the Secret the DSN comes from
    block = deployment.split("args:", 1)[1].split("env:", 1)[0]
    args = re.findall(r"^\s+- (\S+)\s*$", block, re.MULTILINE)
    command = ["indexer", "run", "-c", "/config/config.toml", "--claims", "$(INDEXER_CLAIMS)"]
    assert args[:6] == command, args
    assert re.search(r"name: INDEXER_CLAIMS\s*\n\s+valueFrom:\s*\n\s+secretKeyRef:", deployment)
    assert "mountPath: /config" in deployment and "configMap:" in deployment


def test_the_configmaps_config_is_one_the_indexer_accepts(tmp_path: Path) -> None:
    text = CONFIGMAP.read_text()
    body = text.split("config.toml: |\n", 1)[1]
    lines = body.splitlines()
    toml = "\n".join(line[4:] if line.startswith("    ") else line for line in lines)
    (tmp_path / "config.toml").write_text(toml)
    shown = run_indexer(
        "config", "show", "-c", tmp_path / "config.toml", "--claims", "postgresql://u:pw@db/idx"
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "[pipelines.transactions]" in shown.stdout


def test_the_systemd_unit_runs_the_indexer_and_stops_it_gracefully() -> None:
    unit = (DEPLOY / "systemd" / "indexer.service").read_text()
    keys: dict[str, str] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            keys[key.strip()] = value.strip()
    assert " run -c /etc/indexer/config.toml" in keys["ExecStart"]
    assert keys["ExecStart"].split()[0].endswith("/indexer")
    assert keys["Restart"] == "on-failure"
    assert keys["KillSignal"] == "SIGTERM"
    assert int(keys["TimeoutStopSec"]) >= 60
    assert keys["User"] and keys["User"] != "root"
    assert keys["WorkingDirectory"].startswith("/")
    for section in ("[Unit]", "[Service]", "[Install]"):
        assert section in unit


def test_no_path_of_a_build_machine_in_deploy() -> None:
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert str(REPO) not in text and "/tmp/" not in text, path
