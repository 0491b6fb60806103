"""docs/runbook.md: every command it tells on-call to run is run here, verbatim, against the simulator."""

from __future__ import annotations

import json
import re

from tests.helpers.cli import run_cli
from tests.helpers.paths import ROOT
from tests.helpers.world import make_world

RUNBOOK = ROOT / "docs" / "runbook.md"


def runbook_commands() -> list[str]:
    """Every `python -m rotation ...` line of the runbook's shell blocks, in order."""
    blocks = re.findall(r"```sh\n(.*?)```", RUNBOOK.read_text(), flags=re.DOTALL)
    return [
        line.strip()
        for block in blocks
        for line in block.splitlines()
        if line.startswith("python -m rotation ")
    ]


def test_runbook_names_the_recovery_commands():
    """The runbook tells on-call how to replay, rotate and reconcile, and how to read history."""
    names = {line.split()[3] for line in runbook_commands()}
    assert {"replay", "rotate", "reconcile", "history", "list"} <= names


def test_every_runbook_command_runs_against_the_simulator(sim, azurite, tmp_path):
    """Each runbook command, with its placeholders filled in, exits 0 against the simulator and Azurite."""
    world = make_world(sim, name="oncall", resource_group="rg")
    vault, cluster = world.vault, world.cluster_id
    env = {"AzureWebJobsStorage": azurite.connection_string}
    assert run_cli("register", cluster, env=env).returncode == 0
    sim.create_key_version(vault, "cmk")  # the event Event Grid would have delivered, now dead-lettered
    record = {**sim.events[-1], "deadLetterReason": "MaxDeliveryAttemptsExceeded", "deliveryAttempts": 30}
    event_file = tmp_path / "deadletter.json"
    event_file.write_text(json.dumps([record]))
    ran = []
    for line in runbook_commands():
        args = line.split()[3:]
        args = [cluster if a == "CLUSTER_ID" else str(event_file) if a == "FILE" else a for a in args]
        proc = run_cli(*args, env=env)
        assert proc.returncode == 0, f"{line}: exit {proc.returncode}: {proc.stderr.strip()}"
        assert "Traceback" not in proc.stderr
        ran.append(args[0])
    latest = sim.latest_version(vault, "cmk")
    doc = sim.cluster(cluster)["properties"]["encryption"]["customerManagedKeyEncryption"]
    assert doc["keyEncryptionKeyUrl"] == sim.key_url(vault, "cmk", latest)
    assert {"replay", "rotate", "reconcile", "history", "list"} <= set(ran)


def failure_sections() -> dict[str, str]:
    """The runbook's failure-mode sections (`### ` headings under "## Failure modes"), by GitHub anchor."""
    text = RUNBOOK.read_text().split("## Failure modes", 1)[1]
    sections = re.split(r"^### ", text, flags=re.MULTILINE)[1:]
    return {anchor(section.splitlines()[0]): section for section in sections}


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")


def test_every_failure_section_names_the_doctor_command_that_diagnoses_it():
    """Each failure mode's commands include `python -m rotation doctor ...`, the check of the chain it breaks."""
    sections = failure_sections()
    assert {"cluster-inaccessible", "key-expired", "poison-message", "key-not-usable"} <= set(sections)
    for name, section in sections.items():
        blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)
        doctor = [
            line
            for block in blocks
            for line in block.splitlines()
            if line.startswith("python -m rotation doctor")
        ]
        assert doctor, f"runbook section {name!r} names no doctor command"


def test_every_alert_links_a_runbook_section_that_names_a_doctor_command():
    """docs/alerts.md: every alert links its failure mode's one runbook section, which names the `doctor` command."""
    text = (RUNBOOK.parent / "alerts.md").read_text()
    assert "## Runbook" not in text  # the procedures live in docs/runbook.md only
    links = re.findall(
        r"^\| `cmk-rotator-<env>-[a-z-]+` \|.*\]\(runbook\.md#([a-z0-9-]+)\) \|$", text, flags=re.MULTILINE
    )
    assert len(links) >= 8
    sections = failure_sections()
    for target in links:
        assert target in sections, target
        assert "python -m rotation doctor" in sections[target], target
