"""Tests for rotation.events: Key Vault key events in both schemas, as captured under tests/events/."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from azure.eventgrid import SystemEventNames

from rotation.events import (
    EventIgnored,
    EventKind,
    EventRejected,
    IgnoredEvent,
    KeyVersionEvent,
    RejectedEvent,
    event_from_eventgrid_fields,
    parse_event,
    parse_payload,
)
from rotation.ids import KeyUrl
from tests.helpers.paths import EVENTS

EVENT_FILES = sorted(p.name for p in EVENTS.glob("*.json") if not p.name.startswith("cluster-"))
VAULT_ID = (
    "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg-keys"
    "/providers/Microsoft.KeyVault/vaults/contoso-kv"
)
VERSION = "4f6e2b0c9d8a47f1b3e5c7a9d1f3b5e7"
KEY_URL = KeyUrl("contoso-kv.vault.azure.net", "cmk-docdb", VERSION)
NBF = datetime(2025, 11, 20, 9, 13, tzinfo=UTC)
EXP = datetime(2026, 11, 20, 9, 13, tzinfo=UTC)


def load(name: str) -> Any:
    """A captured payload of tests/events/, parsed."""
    return json.loads((EVENTS / name).read_text(encoding="utf-8"))


def base_event() -> dict[str, Any]:
    """The captured Event Grid KeyNewVersionCreated event, as a fresh dict."""
    event = load("key-new-version.eventgrid.json")[0]
    assert isinstance(event, dict)
    return copy.deepcopy(event)


def with_data(**fields: object) -> dict[str, Any]:
    """The base event with data fields replaced (a value of ... removes the field)."""
    event = base_event()
    for name, value in fields.items():
        if value is ...:
            del event["data"][name]
        else:
            event["data"][name] = value
    return event


def with_top(**fields: object) -> dict[str, Any]:
    """The base event with top-level fields replaced (a value of ... removes the field)."""
    event = base_event()
    for name, value in fields.items():
        if value is ...:
            del event[name]
        else:
            event[name] = value
    return event


def rejection(raw: object) -> EventRejected:
    """The EventRejected that parsing ``raw`` raises (the test fails if it does not)."""
    with pytest.raises(EventRejected) as info:
        parse_event(raw)
    return info.value


# --- captured payloads ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", EVENT_FILES)
def test_every_captured_payload_parses(name: str):
    """Every payload under tests/events parses with no rejection (non-key events are ignored)."""
    results = parse_payload(load(name))
    assert results
    for result in results:
        assert isinstance(result, KeyVersionEvent | IgnoredEvent), result
        if isinstance(result, KeyVersionEvent):
            assert result.key_url.version is not None


def test_eventgrid_new_version():
    """The Event Grid KeyNewVersionCreated sample yields every field, times in UTC with 7 fraction digits read."""
    assert parse_event(base_event()) == KeyVersionEvent(
        event_id="7c1a3b52-41e2-4c11-9f1e-2f6d0c3a9b10",
        event_type="Microsoft.KeyVault.KeyNewVersionCreated",
        kind=EventKind.NEW_VERSION,
        schema="eventgrid",
        source=VAULT_ID,
        subject="cmk-docdb",
        event_time=datetime(2026, 11, 20, 9, 14, 3, 551234, tzinfo=UTC),
        key_url=KEY_URL,
        not_before=NBF,
        expires_on=EXP,
    )


def test_cloudevents_new_version():
    """The CloudEvents sample (numeric NBF/EXP) yields the same event with schema 'cloudevents'."""
    (event,) = parse_payload(load("key-new-version.cloudevent.json"))
    assert isinstance(event, KeyVersionEvent)
    assert event.schema == "cloudevents"
    assert event.event_id == "0b9e8f1d-2a3c-4d5e-8f70-91a2b3c4d5e6"
    assert event.source == VAULT_ID
    assert event.event_time == datetime(2026, 11, 20, 9, 14, 3, 551234, tzinfo=UTC)
    assert (event.key_url, event.not_before, event.expires_on) == (KEY_URL, NBF, EXP)


def test_event_type_uses_sdk_names():
    """event_type is the SDK's SystemEventNames value."""
    event = parse_event(base_event())
    assert event.event_type == SystemEventNames.KeyVaultKeyNewVersionCreatedEventName


def test_string_and_number_times_are_equal():
    """NBF/EXP as numeric strings and as numbers give the same times."""
    as_strings = parse_event(base_event())
    as_numbers = parse_event(with_data(NBF=1763629980, EXP=1795165980))
    assert (as_strings.not_before, as_strings.expires_on) == (as_numbers.not_before, as_numbers.expires_on)


@pytest.mark.parametrize("value", [None, ..., "", "  "])
def test_null_absent_or_blank_times_are_none(value: object):
    """NBF/EXP that are null, absent or blank strings give None."""
    event = parse_event(with_data(NBF=value, EXP=value))
    assert event.not_before is None
    assert event.expires_on is None


@pytest.mark.parametrize("value", [1763629980.9, " 1763629980 ", "1763629980.75", 1763629980.0])
def test_float_and_padded_times_are_floored(value: object):
    """Float seconds are floored and numeric strings trimmed."""
    assert parse_event(with_data(NBF=value)).not_before == NBF


def test_time_bounds():
    """0 and the last second of year 9999 are valid Unix times."""
    assert parse_event(with_data(NBF=0)).not_before == datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_event(with_data(EXP=253402300799)).expires_on == datetime(
        9999, 12, 31, 23, 59, 59, tzinfo=UTC
    )


def test_docs_sample_with_trailing_space_name_and_leading_space_value():
    """A trailing space in a field name ('ObjectName ') and a leading space in a value are tolerated."""
    (event,) = parse_payload(load("key-new-version.docs-sample.eventgrid.json"))
    assert isinstance(event, KeyVersionEvent)
    assert event.key_url.version == "ee059b2bb5bc48398a53b168c6cdcb10"
    assert event.event_time == datetime(2026, 11, 20, 9, 14, 3, tzinfo=UTC)
    assert event.not_before is None


def test_camelcase_data_names_and_time_offset():
    """CamelCase data names (id, vaultName, objectName, version) parse; a +01:00 time is converted to UTC."""
    (event,) = parse_payload(load("key-new-version.camelcase.cloudevent.json"))
    assert isinstance(event, KeyVersionEvent)
    assert event.key_url == KEY_URL
    assert event.event_time == datetime(2026, 11, 20, 9, 14, 3, 551234, tzinfo=UTC)
    assert event.event_time.tzinfo is UTC


def test_field_names_match_any_case_and_whitespace():
    """Top-level and data field names match case-insensitively and with whitespace stripped."""
    event = base_event()
    raw = {f" {k.upper()} ": v for k, v in event.items() if k != "data"}
    raw["DATA"] = {f"{k.lower()}\t": v for k, v in event["data"].items()}
    assert parse_event(raw) == parse_event(event)


def test_string_values_are_trimmed():
    """String values are trimmed: id, topic, subject, type and data values."""
    event = base_event()
    for name in ("id", "topic", "subject", "eventType", "eventTime"):
        event[name] = f"  {event[name]}\n"
    event["data"]["Id"] = f" {event['data']['Id']} "
    event["data"]["VaultName"] = " contoso-kv"
    assert parse_event(event) == parse_event(base_event())


def test_duplicate_names_with_equal_values_are_accepted():
    """Two spellings of one field with the same value are not ambiguous."""
    event = base_event()
    event["data"]["id"] = event["data"]["Id"]
    assert parse_event(event).key_url == KEY_URL


def test_event_type_is_case_insensitive_and_canonical():
    """The event type matches case-insensitively and is reported in its canonical form."""
    event = parse_event(with_top(eventType="microsoft.keyvault.KEYNEWVERSIONCREATED"))
    assert event.event_type == "Microsoft.KeyVault.KeyNewVersionCreated"


def test_near_expiry_kind():
    """KeyNearExpiry events have kind NEAR_EXPIRY."""
    (event,) = parse_payload(load("key-near-expiry.eventgrid.json"))
    assert isinstance(event, KeyVersionEvent)
    assert event.kind is EventKind.NEAR_EXPIRY
    assert event.event_type == SystemEventNames.KeyVaultKeyNearExpiryEventName


def test_expired_kind():
    """KeyExpired events have kind EXPIRED."""
    (event,) = parse_payload(load("key-expired.eventgrid.json"))
    assert isinstance(event, KeyVersionEvent)
    assert event.kind is EventKind.EXPIRED
    assert event.event_type == SystemEventNames.KeyVaultKeyExpiredEventName
    assert event.expires_on == event.event_time


def test_secret_event_is_ignored():
    """A SecretNewVersionCreated event is ignored, naming the type and carrying the event id."""
    (raw,) = load("secret-new-version.eventgrid.json")
    with pytest.raises(EventIgnored) as info:
        parse_event(raw)
    assert (
        info.value.reason
        == "event type 'Microsoft.KeyVault.SecretNewVersionCreated' is not a Key Vault key event"
    )
    assert info.value.event_type == "Microsoft.KeyVault.SecretNewVersionCreated"
    assert info.value.event_id == "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


def test_vault_access_policy_changed_is_ignored():
    """VaultAccessPolicyChanged (whose data.Id is no key URL) is ignored, not rejected."""
    (result,) = parse_payload(load("vault-access-policy-changed.eventgrid.json"))
    assert isinstance(result, IgnoredEvent)
    assert result.event_type == "Microsoft.KeyVault.VaultAccessPolicyChanged"


@pytest.mark.parametrize(
    "event_type",
    [
        "Microsoft.KeyVault.CertificateNewVersionCreated",
        "Microsoft.EventGrid.SubscriptionValidationEvent",
        "Contoso.Anything",
        "",
    ],
)
def test_other_event_types_are_ignored(event_type: str):
    """Certificate, validation and unknown event types are ignored."""
    with pytest.raises(EventIgnored, match="is not a Key Vault key event"):
        parse_event(with_top(eventType=event_type))


def test_dead_letter_records_parse():
    """Event Grid dead-letter records (extra top-level delivery fields) parse via parse_payload."""
    results = parse_payload(load("key-new-version.deadletter.json"))
    assert [type(r) for r in results] == [KeyVersionEvent, KeyVersionEvent]
    first, second = results
    assert isinstance(first, KeyVersionEvent)
    assert isinstance(second, KeyVersionEvent)
    assert first.key_url == KEY_URL
    assert second.key_url.name == "cmk-orders"
    assert second.expires_on is None


def test_parse_payload_single_object():
    """A single event object is a payload of one event."""
    assert parse_payload(base_event()) == [parse_event(base_event())]


def test_parse_payload_empty_array():
    """An empty array yields no events."""
    assert parse_payload([]) == []


@pytest.mark.parametrize("raw", [None, "[]", 3, 2.5, True])
def test_parse_payload_rejects_other_top_levels(raw: object):
    """A payload that is not an object or array is one rejection."""
    (result,) = parse_payload(raw)
    assert isinstance(result, RejectedEvent)
    assert result.reason == "payload is not a JSON object or array"
    assert result.event_id is None


def test_parse_payload_keeps_going_after_bad_events():
    """Bad events are returned in place and never hide the good ones."""
    secret = load("secret-new-version.eventgrid.json")[0]
    results = parse_payload([42, base_event(), with_data(Id=5), secret, base_event()])
    assert [type(r) for r in results] == [
        RejectedEvent,
        KeyVersionEvent,
        RejectedEvent,
        IgnoredEvent,
        KeyVersionEvent,
    ]


def test_custom_allowed_suffixes():
    """allowed_suffixes is passed through to the key URL check."""
    with pytest.raises(EventRejected, match="not in an allowed vault domain"):
        parse_event(base_event(), allowed_suffixes=[".vault.azure.cn"])
    (result,) = parse_payload(base_event(), allowed_suffixes=[".vault.azure.cn"])
    assert isinstance(result, RejectedEvent)


def test_managed_hsm_event():
    """A Managed HSM key event with a managedHSMs topic parses."""
    event = with_data(
        Id=f"https://contoso-hsm.managedhsm.azure.net/keys/cmk-docdb/{VERSION}", VaultName="contoso-hsm"
    )
    event["topic"] = VAULT_ID.replace("vaults/contoso-kv", "managedHSMs/contoso-hsm")
    assert parse_event(event).key_url.host == "contoso-hsm.managedhsm.azure.net"


@pytest.mark.parametrize("value", [..., None, "", "  "])
def test_missing_topic_is_allowed(value: object):
    """A record without topic (replayed or dead-lettered) parses with source ''."""
    assert parse_event(with_top(topic=value)).source == ""


@pytest.mark.parametrize("name", ["VaultName", "ObjectName", "Version", "ObjectType", "NBF", "EXP"])
def test_optional_data_fields_may_be_absent(name: str):
    """VaultName, ObjectName, Version, ObjectType, NBF and EXP are optional."""
    assert parse_event(with_data(**{name: ...})).key_url == KEY_URL


def test_optional_top_fields_may_be_absent():
    """Subject and eventTime are optional."""
    event = parse_event(with_top(subject=..., eventTime=None))
    assert event.subject == ""
    assert event.event_time is None


def test_object_type_compared_case_insensitively():
    """ObjectType 'KEY' is a key."""
    assert parse_event(with_data(ObjectType="KEY")).kind is EventKind.NEW_VERSION


def test_data_names_compared_case_insensitively():
    """VaultName, ObjectName and Version match data.Id regardless of case."""
    event = with_data(VaultName="CONTOSO-KV", ObjectName="CMK-DOCDB", Version=VERSION.upper())
    assert parse_event(event).key_url == KEY_URL


def test_event_time_precision():
    """Up to 9 fraction digits are read (truncated to microseconds); 'z' and offsets work."""
    assert parse_event(with_top(eventTime="2026-11-20T09:14:03.123456789z")).event_time == datetime(
        2026, 11, 20, 9, 14, 3, 123456, tzinfo=UTC
    )
    assert parse_event(with_top(eventTime="2026-11-20T09:14:03.5-02:30")).event_time == datetime(
        2026, 11, 20, 11, 44, 3, 500000, tzinfo=UTC
    )


def test_key_version_event_is_frozen():
    """KeyVersionEvent cannot be modified."""
    event = parse_event(base_event())
    with pytest.raises(AttributeError):
        event.event_id = "x"  # type: ignore[misc]


# --- rejections: one rule each, with its exact reason -----------------------------------------------

LONG_ID = "e" * 257
EVIL_URL = f"https://contoso-kv.vault.azure.net.evil.example/keys/cmk-docdb/{VERSION}"
CE = load("key-new-version.cloudevent.json")[0]


def ce(**fields: object) -> dict[str, Any]:
    """The captured CloudEvents event with top-level fields replaced (... removes)."""
    event = copy.deepcopy(CE)
    for name, value in fields.items():
        if value is ...:
            del event[name]
        else:
            event[name] = value
    return event


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (with_top(id=...), "id is missing"),
        (with_top(id=None), "id is missing"),
        (with_top(id=17), "id is not a string (got number)"),
        (with_top(id=["a"]), "id is not a string (got array)"),
        (with_top(id="  "), "id is empty"),
        (with_top(id=LONG_ID), "id is longer than 256 characters"),
        (with_top(id="a\nINFO forged"), "id 'a\\nINFO forged' contains control characters"),
        (
            with_top(eventType=...),
            "event has no type: neither eventType (Event Grid) nor specversion and type (CloudEvents)",
        ),
        (ce(specversion=...), "eventType is missing (a CloudEvents event needs specversion)"),
        (with_top(eventType=7), "eventType is not a string (got number)"),
        (with_top(eventType={"a": 1}), "eventType is not a string (got object)"),
        (ce(specversion="0.3"), "specversion '0.3' is not '1.0'"),
        (ce(specversion=1.0), "specversion is not a string (got number)"),
        (ce(type=...), "type is missing"),
        (with_top(data=...), "data is missing"),
        (with_top(data=None), "data is missing"),
        (with_top(data=[]), "data is not an object (got array)"),
        (with_top(data='{"Id": "x"}'), "data is not an object (got string)"),
        (with_data(Id=...), "data.Id is missing"),
        (with_data(Id=5), "data.Id is not a string (got number)"),
        (with_data(Id={"url": "x"}), "data.Id is not a string (got object)"),
        (with_data(Id=""), "data.Id is empty"),
        (
            with_data(Id=EVIL_URL),
            "data.Id host 'contoso-kv.vault.azure.net.evil.example' is not in an allowed vault domain",
        ),
        (
            with_data(Id="https://contoso-kv.vault.azure.net/keys/cmk-docdb"),
            "data.Id has no version: 'https://contoso-kv.vault.azure.net/keys/cmk-docdb'",
        ),
        (with_data(Id=KEY_URL.__str__().replace("https", "http")), "data.Id scheme 'http' is not https"),
        (
            with_data(Id=f"https://user@contoso-kv.vault.azure.net/keys/cmk-docdb/{VERSION}"),
            "data.Id must not contain user info: 'user@contoso-kv.vault.azure.net'",
        ),
        (
            with_data(Id=f"https://contoso-kv.vault.azure.net:8443/keys/cmk-docdb/{VERSION}"),
            "data.Id port '8443' is not allowed (only the default https port)",
        ),
        (
            with_data(Id=f"https://contoso-kv.vault.azure.net/secrets/cmk-docdb/{VERSION}"),
            f"data.Id path '/secrets/cmk-docdb/{VERSION}' is not /keys/{{name}} or /keys/{{name}}/{{version}}",
        ),
        (
            with_data(Id=str(KEY_URL)[:-1] + "x"),
            f"data.Id version '{VERSION[:-1]}x' is not 32 hex characters",
        ),
        (with_data(Version="xyz"), "data.Version 'xyz' is not 32 hex characters"),
        (with_data(Version=32), "data.Version is not a string (got number)"),
        (
            with_data(Version="0" * 32),
            f"data.Version '{'0' * 32}' does not match data.Id version '{VERSION}'",
        ),
        (with_data(VaultName="a"), "data.VaultName 'a' does not match data.Id vault 'contoso-kv'"),
        (with_data(VaultName=""), "data.VaultName '' does not match data.Id vault 'contoso-kv'"),
        (with_data(ObjectName="other"), "data.ObjectName 'other' does not match data.Id key 'cmk-docdb'"),
        (with_data(ObjectType="Secret"), "data.ObjectType 'Secret' is not 'Key'"),
        (with_data(ObjectType=["Key"]), "data.ObjectType is not a string (got array)"),
        (with_data(NBF="abc"), "data.NBF 'abc' is not a Unix time"),
        (with_data(NBF="-1"), "data.NBF '-1' is not a Unix time"),
        (with_data(NBF="1e9"), "data.NBF '1e9' is not a Unix time"),
        (with_data(NBF=True), "data.NBF True is not a Unix time"),
        (with_data(EXP=False), "data.EXP False is not a Unix time"),
        (with_data(NBF=-1), "data.NBF '-1' is out of range (0 to year 9999)"),
        (with_data(NBF=-0.5), "data.NBF '-0.5' is out of range (0 to year 9999)"),
        (with_data(EXP=253402300800), "data.EXP '253402300800' is out of range (0 to year 9999)"),
        (with_data(EXP=1e300), "data.EXP '1e+300' is out of range (0 to year 9999)"),
        (with_data(EXP=10**40), "data.EXP <133-bit integer> is out of range (0 to year 9999)"),
        (with_data(EXP=float("nan")), "data.EXP 'nan' is not a Unix time"),
        (with_data(EXP=float("inf")), "data.EXP 'inf' is not a Unix time"),
        (with_data(EXP=[1]), "data.EXP is not a Unix time (got array)"),
        (with_data(EXP={}), "data.EXP is not a Unix time (got object)"),
        (
            with_top(topic="not-an-id"),
            "topic is invalid: resource id is not absolute (must start with '/subscriptions/'): 'not-an-id'",
        ),
        (
            with_top(topic=VAULT_ID.replace("Microsoft.KeyVault", "Microsoft.Storage")),
            (
                "topic is invalid: not a Key Vault resource id: expected /subscriptions/{sub}/resourceGroups/{rg}"
                "/providers/Microsoft.KeyVault/vaults|managedHSMs/{name}"
            ),
        ),
        (
            with_top(topic=VAULT_ID.replace("contoso-kv", "other-kv")),
            "topic vault 'other-kv' does not match data.Id vault 'contoso-kv'",
        ),
        (with_top(topic=5), "topic is not a string (got number)"),
        (
            ce(source=VAULT_ID.replace("contoso-kv", "other-kv")),
            "source vault 'other-kv' does not match data.Id vault 'contoso-kv'",
        ),
        (with_top(subject=5), "subject is not a string (got number)"),
        (with_top(eventTime="yesterday"), "eventTime 'yesterday' is not an ISO 8601 time with a time zone"),
        (
            with_top(eventTime="2026-11-20T09:14:03"),
            "eventTime '2026-11-20T09:14:03' is not an ISO 8601 time with a time zone",
        ),
        (
            with_top(eventTime="2026-13-01T00:00:00Z"),
            "eventTime '2026-13-01T00:00:00Z' is not a valid date and time",
        ),
        (
            with_top(eventTime="2026-11-20T09:14:03+25:00"),
            "eventTime '2026-11-20T09:14:03+25:00' is not a valid date and time",
        ),
        (with_top(eventTime=1763629980), "eventTime is not a string (got number)"),
        (ce(time="2026-02-30T00:00:00Z"), "time '2026-02-30T00:00:00Z' is not a valid date and time"),
    ],
)
def test_rejection_reasons(raw: dict[str, Any], reason: str):
    """Each malformed field is rejected with a one-line reason naming it."""
    error = rejection(raw)
    assert error.reason == reason
    assert str(error) == reason


def test_rejection_carries_event_id():
    """A rejection after the id is read carries the event id; one without a valid id carries None."""
    assert rejection(with_data(Version="xyz")).event_id == "7c1a3b52-41e2-4c11-9f1e-2f6d0c3a9b10"
    assert rejection(with_top(id=5)).event_id is None


@pytest.mark.parametrize("raw", [[], "event", 5, None, ["a", "b"]])
def test_non_object_event_is_rejected(raw: object):
    """An event that is not a JSON object is rejected, naming what it was."""
    assert rejection(raw).reason.startswith("event is not a JSON object (got ")


def test_ambiguous_top_level_field_is_rejected():
    """Two spellings of a top-level field with different values are rejected."""
    raw = with_top(EventType="Microsoft.KeyVault.SecretNewVersionCreated")
    error = rejection(raw)
    assert error.reason == "event has ambiguous fields 'eventType' and 'EventType'"
    assert error.event_id == "7c1a3b52-41e2-4c11-9f1e-2f6d0c3a9b10"


def test_ambiguous_data_field_is_rejected():
    """Two spellings of a data field with different values are rejected."""
    raw = with_data(**{"id ": EVIL_URL})
    assert rejection(raw).reason == "data has ambiguous fields 'Id' and 'id '"


def test_hostile_values_are_truncated_and_escaped():
    """Quoted values are cut to about 80 characters and repr()-ed: no raw newline reaches a reason."""
    hostile = "x\n" * 500
    for raw in (with_data(ObjectType=hostile), with_data(NBF=hostile), with_top(eventTime=hostile)):
        reason = rejection(raw).reason
        assert "\n" not in reason
        assert len(reason) < 200
        assert "...'" in reason


# --- Functions trigger helper ---------------------------------------------------------------------


def trigger_fields(**overrides: object) -> dict[str, Any]:
    """The trigger metadata fields of the captured event, ``overrides`` changing some."""
    raw = base_event()
    fields: dict[str, Any] = {
        "event_id": raw["id"],
        "topic": raw["topic"],
        "subject": raw["subject"],
        "event_type": raw["eventType"],
        "event_time": datetime(2026, 11, 20, 9, 14, 3, 551234, tzinfo=UTC),
        "data": raw["data"],
    }
    fields.update(overrides)
    return fields


def test_from_eventgrid_fields_equals_parse_event():
    """The trigger helper gives the same event as parsing the raw JSON."""
    assert event_from_eventgrid_fields(**trigger_fields()) == parse_event(base_event())


@pytest.mark.parametrize(
    "event_time",
    [
        datetime(2026, 11, 20, 9, 14, 3, 551234),  # noqa: DTZ001 - the Functions library drops the zone
        datetime(2026, 11, 20, 10, 14, 3, 551234, tzinfo=timezone(timedelta(hours=1))),
        "2026-11-20T09:14:03.5512345Z",
    ],
)
def test_from_eventgrid_fields_times(event_time: object):
    """Aware, naive (taken as UTC) and string event times give the same UTC time."""
    event = event_from_eventgrid_fields(**trigger_fields(event_time=event_time))
    assert event.event_time == datetime(2026, 11, 20, 9, 14, 3, 551234, tzinfo=UTC)


def test_from_eventgrid_fields_optional_parts():
    """topic, subject and event_time may be None."""
    event = event_from_eventgrid_fields(**trigger_fields(topic=None, subject=None, event_time=None))
    assert (event.source, event.subject, event.event_time) == ("", "", None)


def test_from_eventgrid_fields_raises_like_parse_event():
    """The helper raises EventIgnored and EventRejected like parse_event."""
    with pytest.raises(EventIgnored):
        event_from_eventgrid_fields(**trigger_fields(event_type="Microsoft.KeyVault.SecretExpired"))
    with pytest.raises(EventRejected, match=r"data is not an object \(got array\)"):
        event_from_eventgrid_fields(**trigger_fields(data=[]))
