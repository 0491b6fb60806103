"""Alerts and the workbook in infra/: each alert links its runbook section, the workbook's queries are real.

Parsed with pycep-parser (no Azure, no Bicep CLI). The log event names the queries use are checked against
the names the code logs (`rotation/`), so a renamed event cannot leave an alert or a chart silently empty.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from pycep import BicepParser

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
RUNBOOK = ROOT / "docs" / "runbook.md"
ALERTS_DOC = ROOT / "docs" / "alerts.md"


@functools.cache
def parse(relative: str) -> dict[str, Any]:
    """A Bicep file under infra/, parsed by pycep (cached)."""
    return BicepParser().parse(file_path=INFRA / relative)


def anchors(path: Path) -> set[str]:
    """GitHub anchors of a Markdown file's headings."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@functools.cache
def logged_event_names() -> frozenset[str]:
    """Every ``"rotation.something"`` event name that the code under rotation/ passes to a logger."""
    names: set[str] = set()
    for path in (ROOT / "rotation").rglob("*.py"):
        names |= set(re.findall(r'"(rotation\.[a-z_]+)"', path.read_text()))
    return frozenset(n for n in names if not n.startswith(("rotation.function_app",)))


def log_alerts() -> dict[str, dict[str, Any]]:
    """The log alerts of alerts.bicep by key."""
    return {a["key"]: a for a in parse("modules/alerts.bicep")["variables"]["logAlerts"]["value"]}


def test_new_alerts_watch_inaccessible_clusters_expired_keys_and_poisoned_jobs():
    """Log alerts exist for an Inaccessible cluster, an expired key version and a job's last failed delivery."""
    alerts = log_alerts()
    inaccessible = alerts["cluster-inaccessible"]["query"]
    assert 'Message == "rotation.drift_detected"' in inaccessible
    assert 'tostring(Properties["reason"]) == "inaccessible"' in inaccessible
    assert 'Message == "rotation.key_expired"' in alerts["key-expired"]["query"]
    assert 'Message == "rotation.job_poisoned"' in alerts["job-poisoned-app"]["query"]
    assert alerts["key-expired"]["dimensions"] == "keyDimension"
    dimension = parse("modules/alerts.bicep")["variables"]["keyDimension"]["value"]
    assert [d["name"] for d in dimension] == ["key"]


def test_every_alert_links_an_existing_runbook_section():
    """Each log alert's description links a heading of docs/runbook.md or docs/alerts.md that exists; docs/alerts.md lists the same runbook section."""
    docs = {"runbook": anchors(RUNBOOK), "alerts": anchors(ALERTS_DOC)}
    for key, alert in log_alerts().items():
        links = re.findall(r"docs/(runbook|alerts)\.md#([a-z0-9-]+)", alert["description"])
        assert links, key
        for doc, target in links:
            assert target in docs[doc], (key, doc, target)
    alerts = log_alerts()
    assert "docs/runbook.md#cluster-inaccessible" in alerts["cluster-inaccessible"]["description"]
    assert "docs/runbook.md#key-expired" in alerts["key-expired"]["description"]
    assert "docs/runbook.md#poison-message" in alerts["job-poisoned-app"]["description"]
    listed = dict(
        re.findall(
            r"^\| `cmk-rotator-<env>-([a-z-]+)` \|.*\]\(runbook\.md#([a-z0-9-]+)\) \|$",
            ALERTS_DOC.read_text(),
            flags=re.MULTILINE,
        )
    )
    for key, alert in alerts.items():
        assert f"docs/runbook.md#{listed[key]}" in alert["description"], key


def test_alert_queries_use_event_names_the_code_logs():
    """Every `Message == "rotation.x"` in an alert query is an event name the code actually logs."""
    for key, alert in log_alerts().items():
        for name in re.findall(r'"(rotation\.[a-z_]+)"', alert["query"]):
            assert name in logged_event_names(), (key, name)


# --- the workbook -------------------------------------------------------------------------------------


def workbook_resource() -> dict[str, Any]:
    """The workbook resource's configuration."""
    [resource] = [
        r["config"]
        for r in parse("modules/workbook.bicep")["resources"].values()
        if r["type"] == "Microsoft.Insights/workbooks"
    ]
    return resource


def workbook_content() -> dict[str, Any]:
    """The workbook's serializedData, as the deployment sends it (the text `loadTextContent` reads), parsed."""
    data = workbook_resource()["properties"]["serializedData"]
    assert data["function"]["type"] == "load_text_content"
    text = (INFRA / "modules" / data["function"]["parameters"]["file_path"]).read_text()
    return json.loads(text)


def workbook_queries() -> dict[str, str]:
    """The workbook's Kusto queries by item name."""
    return {
        item["name"]: item["content"]["query"] for item in workbook_content()["items"] if item["type"] == 3
    }


def test_workbook_is_a_shared_workbook_over_the_workspace_wired_from_main():
    """infra/ deploys the workbook (shared, GUID name, category workbook) on the workspace, from main.bicep."""
    resource = workbook_resource()
    assert resource["kind"] == "shared"
    assert resource["name"]["function"]["type"] == "guid"
    assert resource["properties"]["category"] == "workbook"
    assert resource["properties"]["sourceId"] == "workspaceId"
    module = parse("main.bicep")["modules"]["workbook"]
    assert module["detail"]["path"] == "modules/workbook.bicep"
    workspace = module["config"]["params"]["workspaceId"]["operator"]["operands"]
    assert workspace["operand_1"] == "monitoring"
    assert workspace["operand_2"]["operator"]["operands"] == {
        "operand_1": "outputs",
        "operand_2": "workspaceId",
    }


def test_workbook_serialized_data_is_valid_notebook_json():
    """The serializedData is JSON in the workbook format: Notebook/1.0, a time range parameter, Log Analytics queries."""
    doc = workbook_content()
    assert doc["version"] == "Notebook/1.0"
    [parameters] = [item for item in doc["items"] if item["type"] == 9]
    assert [p["name"] for p in parameters["content"]["parameters"]] == ["TimeRange"]
    for item in doc["items"]:
        if item["type"] == 3:
            content = item["content"]
            assert content["version"] == "KqlItem/1.0"
            assert content["queryType"] == 0  # Logs (KQL)
            assert content["resourceType"] == "microsoft.operationalinsights/workspaces"
            assert content["timeContextFromParameter"] == "TimeRange"
            assert content["query"].lstrip().startswith(("AppTraces", "let ", "//"))


def test_workbook_shows_the_four_views():
    """Rotations over time, outcomes and error codes, clusters behind, event-to-verified latency."""
    queries = workbook_queries()
    assert {"rotations-over-time", "outcomes-and-error-codes", "clusters-behind", "event-to-verified"} <= set(
        queries
    )
    assert "error_code" in queries["outcomes-and-error-codes"]
    assert "percentile(latency_s, 95)" in queries["event-to-verified"]


def test_workbook_queries_read_event_names_the_code_logs():
    """Every event name a workbook query reads is one the code under rotation/ logs."""
    seen = set()
    for name, query in workbook_queries().items():
        for event in re.findall(r'"(rotation\.[a-z_]+)"', query):
            assert event in logged_event_names(), (name, event)
            seen.add(event)
    assert {"rotation.event_received", "rotation.cluster_rotated", "rotation.reconcile_finished"} <= seen


def test_runbook_links_the_workbook():
    """The runbook tells on-call where the workbook is."""
    assert "workbook **cmk-rotator**" in RUNBOOK.read_text()


def test_key_not_usable_alert_carries_the_reason_with_the_target_url():
    """The key-not-usable alert projects the log line's reason (tests/app/test_signals.py: it starts with the URL)."""
    query = log_alerts()["key-not-usable"]["query"]
    assert 'reason = tostring(Properties["reason"])' in query
    assert '"key-not-usable"' in query
