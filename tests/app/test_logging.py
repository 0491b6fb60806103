"""Logs that answer "what happened to my cluster": event names, one field scheme, nothing secret."""

from __future__ import annotations

import logging
import os
import re

import pytest

from azsim.faults import Fault
from rotation.logs import JsonFormatter, TextFormatter, record_fields
from rotation.store.jobs import Job

BEARER_CREDENTIAL = re.compile(r"Bearer\s+(?!authorization=)[A-Za-z0-9._~+/=-]{12,}")
JOB_FIELDS = {
    "cluster_id",
    "subscription",
    "key",
    "from_version",
    "to_version",
    "outcome",
    "reason",
    "attempts",
    "duration_s",
    "event_id",
    "invocation_id",
    "trigger",
}


@pytest.fixture
def records(caplog):
    """The caplog fixture, capturing every logger at DEBUG."""
    caplog.set_level(logging.DEBUG)  # every logger, azure.* included
    return caplog


async def deliver(stack, records, *, version: str | None = None):
    """Create a key version (its event), deliver it to the event handler, and run the jobs as the host would."""
    key = stack.key
    version = version or stack.sim.create_key_version(stack.vault, key)
    event = stack.sim.events[-1]
    await stack.service.fanout.handle_event(stack.service.fanout.parse(event), invocation_id="inv-event")
    await stack.drain(idle=0.3)
    return event["id"], version


@pytest.fixture
async def watched(stack):
    """The stack with a new key and two watched clusters on its first version."""
    stack.key, v1 = stack.new_key()
    stack.clusters = [stack.add_cluster(stack.key, v1) for _ in range(2)]
    await stack.register(*stack.clusters)
    return stack


def by_event(records, event_id: str) -> list[logging.LogRecord]:
    """The captured records that carry ``event_id``."""
    return [r for r in records.records if getattr(r, "event_id", None) == event_id]


async def test_one_rotation_can_be_followed_by_event_id_alone(watched, records):
    """Filtering on the event id shows the event, its summary, each PUT and each verified outcome."""
    event_id, version = await deliver(watched, records)
    trail = by_event(records, event_id)
    names = [r.getMessage() for r in trail]
    assert names[0] == "rotation.event_received"
    assert names.count("rotation.jobs_enqueued") == 1
    assert names.count("rotation.put_accepted") == 2
    assert names.count("rotation.cluster_rotated") == 2
    summary = next(r for r in trail if r.getMessage() == "rotation.jobs_enqueued")
    assert (summary.clusters_found, summary.queued) == (2, 2)
    rotated = [r for r in trail if r.getMessage() == "rotation.cluster_rotated"]
    assert {r.cluster_id for r in rotated} == set(watched.clusters)
    for r in rotated:
        assert set(record_fields(r)) >= JOB_FIELDS, JOB_FIELDS - set(record_fields(r))
        assert (r.outcome, r.to_version, r.trigger) == ("rotated", version, "event")
        assert r.request_id
        assert r.correlation_id
        assert r.invocation_id  # the queue invocation that ran the job


async def test_skip_is_logged_with_outcome_and_reason(watched, records):
    """A duplicate job is one cluster_skipped line per cluster with outcome already-current."""
    event_id, version = await deliver(watched, records)
    target = watched.sim.key_url(watched.vault, watched.key, version)
    for cluster in watched.clusters:  # the jobs a duplicate past the fan-out memory would queue
        await watched.service.queue.send(
            Job.new(cluster, trigger="event", target_key_url=target, event_id=event_id)
        )
    await watched.drain(idle=0.3)
    skipped = [r for r in by_event(records, event_id) if r.getMessage() == "rotation.cluster_skipped"]
    assert len(skipped) == 2
    assert {r.outcome for r in skipped} == {"already-current"}
    assert all(r.levelno == logging.INFO and r.reason for r in skipped)


async def test_duplicate_delivery_is_logged_once_and_queues_nothing(watched, records):
    """A second delivery of a fanned-out event logs rotation.event_duplicate and queues no job."""
    event_id, _ = await deliver(watched, records)
    report = await watched.service.fanout.handle_event(
        watched.service.fanout.parse(watched.sim.events[-1]), invocation_id="inv-dup"
    )
    assert (report.outcome, report.jobs) == ("duplicate", [])
    [dup] = [r for r in by_event(records, event_id) if r.getMessage() == "rotation.event_duplicate"]
    assert dup.levelno == logging.INFO
    assert "duplicate" in dup.reason
    assert await watched.queued() == []


async def test_retry_is_logged_with_attempt_wait_and_status(watched, records):
    """A throttled PUT logs retry_scheduled with the attempt, the server's wait, the status and the cluster."""
    watched.sim.inject(
        method="PUT",
        service="arm",
        faults=[Fault.status(429, error_code="TooManyRequests", headers={"Retry-After": "1"})],
    )
    event_id, _ = await deliver(watched, records)
    retries = [r for r in by_event(records, event_id) if r.getMessage() == "rotation.retry_scheduled"]
    assert len(retries) == 1
    r = retries[0]
    assert r.levelno == logging.WARNING
    assert (r.attempt, r.wait_s, r.status, r.error_code, r.policy) == (
        1,
        1.0,
        429,
        "TooManyRequests",
        "arm-write",
    )
    assert r.cluster_id in watched.clusters
    assert r.reason


async def test_failure_is_logged_at_error_with_arm_code(watched, records):
    """A failed operation is one cluster_failed ERROR line with ARM's error code and message."""
    watched.sim.fail_next_operation(watched.clusters[0], code="KeyVaultAccessForbidden", message="no access")
    event_id, _ = await deliver(watched, records)
    failed = [r for r in by_event(records, event_id) if r.getMessage() == "rotation.cluster_failed"]
    assert len(failed) == 1
    r = failed[0]
    assert r.levelno == logging.ERROR
    assert (r.cluster_id, r.outcome) == (watched.clusters[0], "failed")
    assert (r.error_code, r.error_message) == ("KeyVaultAccessForbidden", "no access")


async def test_no_record_contains_a_token_or_credential_header(watched, records):
    """No log record, formatted either way, contains a bearer token the simulator issued or the identity header."""
    await deliver(watched, records)
    assert watched.sim.tokens
    secrets = {*watched.sim.tokens, os.environ["IDENTITY_HEADER"]}
    text, json_ = TextFormatter(), JsonFormatter()
    for record in records.records:
        blob = " ".join([text.format(record), json_.format(record), repr(vars(record))])
        assert not any(s in blob for s in secrets), record.getMessage()
        # "Bearer" may appear in Key Vault's challenge header or msal's masked cache event, never with a credential
        assert not BEARER_CREDENTIAL.search(blob), record.getMessage()


def test_text_lines_cannot_be_forged_by_field_values():
    """A field with a newline or quotes is escaped: one record is always one line."""
    record = logging.LogRecord("rotation", logging.ERROR, __file__, 1, "rotation.event_rejected", (), None)
    record.reason = 'bad\n2026-01-01T00:00:00Z INFO rotation.cluster_rotated outcome="rotated"'
    for formatter in (TextFormatter(), JsonFormatter()):
        line = formatter.format(record)
        assert "\n" not in line
        assert "rotation.event_rejected" in line
