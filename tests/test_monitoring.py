"""deploy/grafana and deploy/prometheus: the dashboard and alert rules query only metrics
the writer exports, and the rules do what their unit tests say (promtool)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from campaign_writer.metrics import METRIC_NAMES, Metrics
from tests.support.services import require_command

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "campaign-writer.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"

METRIC = re.compile(r"\b((?:campaign_writer|process|python)_[a-z0-9_]+)")


def exported_names() -> set[str]:
    """Every series name a writer exports (a counter's with _total, a histogram's parts)."""
    names = set(METRIC_NAMES) | {"campaign_writer_source_redeliveries_total"}
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + part for part in ("_bucket", "_count", "_sum"))
    return names


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def run(*command: str, cwd: Path = ROOT) -> str:
    result = subprocess.run(
        list(command), capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_dashboard_and_rules_query_only_exported_metrics() -> None:
    """Each metric name in the dashboard and the alert rules is one the writer exports."""
    exported = exported_names()
    queried = set(METRIC.findall(ALERTS.read_text(encoding="utf-8")))
    queried |= {name for expr in dashboard_expressions() for name in METRIC.findall(expr)}
    assert len(queried) > 20
    assert queried <= exported, sorted(queried - exported)


def test_the_dashboard_covers_what_operators_watch() -> None:
    """A provisionable dashboard: a data source variable on every query, unique panel ids,
    and panels for rates, throttle, 429s, in-flight, queue, dead letters and auth."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "campaign-writer" and "id" not in dashboard
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    text = " ".join(dashboard_expressions())
    for name in (
        "campaign_writer_events_accepted_total",
        "campaign_writer_records_delivered_total",
        "campaign_writer_calls_total",
        "campaign_writer_rate_limit",
        "campaign_writer_throttled_total",
        "campaign_writer_in_flight",
        "campaign_writer_in_flight_limit",
        "campaign_writer_queue_depth",
        "campaign_writer_queue_oldest_age_seconds",
        "campaign_writer_records_dead_lettered_total",
        "campaign_writer_auth_ready",
        "campaign_writer_readiness",
    ):
        assert name in text, name


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool accepts each dashboard query (as a recording rule, Grafana's variables
    given values)."""
    promtool = require_command("promtool", "prometheus")
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for index, expr in enumerate(dashboard_expressions()):
        concrete = (
            expr.replace("$__rate_interval", "5m")
            .replace("$instance", ".*")
            .replace("$job", "campaign-writer")
        )
        lines += [
            f"      - record: dashboard:query{index}",
            f"        expr: {json.dumps(concrete)}",
        ]
    rules = tmp_path / "dashboard_rules.yml"
    rules.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert "SUCCESS" in run(promtool, "check", "rules", str(rules))


def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    """promtool check rules accepts alerts.yml; promtool test rules feeds alerts_test.yml's
    series and every alert fires (or stays quiet) when it says."""
    promtool = require_command("promtool", "prometheus")
    assert "SUCCESS: 7 rules found" in run(promtool, "check", "rules", str(ALERTS))
    assert "SUCCESS" in run(promtool, "test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text(encoding="utf-8")))
    defined = set(re.findall(r"- alert: (\w+)", ALERTS.read_text(encoding="utf-8")))
    assert (
        defined
        == tested
        == {
            "CampaignWriterDown",
            "CampaignWriterOldestRecordTooOld",
            "CampaignWriterDeadLettersGrowing",
            "CampaignWriterDeliveryFatal",
            "CampaignWriterThrottled",
            "CampaignWriterAuthFailing",
            "CampaignWriterQueueNearlyFull",
        }
    )
