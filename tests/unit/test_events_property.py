"""Property tests for rotation.events (and the key URL parser under it): structure-aware fuzzing.

Valid events are generated from templates in both schemas, with every tolerated variation (field-name
case and padding, value padding, number or string NBF/EXP, optional fields, dead-letter extras), then
mutated. Whatever the input, parsing returns a consistent event or raises EventRejected/EventIgnored
(parse_payload returns RejectedEvent/IgnoredEvent instead).
"""

from __future__ import annotations

import copy
import re
import string
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rotation.events import (
    EventIgnored,
    EventKind,
    EventRejected,
    IgnoredEvent,
    KeyVersionEvent,
    RejectedEvent,
    parse_event,
    parse_payload,
)
from rotation.ids import DEFAULT_VAULT_SUFFIXES, InvalidKeyUrl, KeyUrl, parse_key_url, parse_vault_id

if TYPE_CHECKING:
    from collections.abc import Callable

# Example counts keep the whole file near 10 s; deadline=None because the first examples warm caches.
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEY_TYPES = {
    "Microsoft.KeyVault.KeyNewVersionCreated": EventKind.NEW_VERSION,
    "Microsoft.KeyVault.KeyNearExpiry": EventKind.NEAR_EXPIRY,
    "Microsoft.KeyVault.KeyExpired": EventKind.EXPIRED,
}
OTHER_TYPES = [
    "Microsoft.KeyVault.SecretNewVersionCreated",
    "Microsoft.KeyVault.CertificateExpired",
    "Microsoft.KeyVault.VaultAccessPolicyChanged",
    "Microsoft.EventGrid.SubscriptionValidationEvent",
]
HEX32 = re.compile(r"[0-9a-f]{32}")
MAX_UNIX = 253_402_300_799
LOWER = string.ascii_lowercase
DIGITS = string.digits
ARABIC_ZEROS = "\u0660" * 32  # digits to str.isdigit(), not to a hex check

# --- building blocks --------------------------------------------------------------------------------

vault_names = st.builds(
    lambda first, middle, last: first + middle + last,
    st.sampled_from(LOWER),
    st.text(LOWER + DIGITS + "-", min_size=1, max_size=22),
    st.sampled_from(LOWER + DIGITS),
).filter(lambda name: "--" not in name)
key_names = st.text(string.ascii_letters + DIGITS + "-", min_size=1, max_size=40)
versions = st.text("0123456789abcdef", min_size=32, max_size=32)
suffixes = st.sampled_from(DEFAULT_VAULT_SUFFIXES)
event_ids = st.uuids().map(str) | st.text(string.ascii_letters + DIGITS + "-_.:", min_size=1, max_size=64)
unix_times = st.integers(0, MAX_UNIX)
paddings = st.sampled_from(["", " ", "  ", "\t", "\n", " \r\n"])
huge_strings = st.builds(lambda ch, n: ch * n, st.characters(), st.integers(100, 5000))
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(
        ["", " ", "Key", "1.0", "1763629980", "-1", "NaN", "https://contoso-kv.vault.azure.net"]
    )
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
FIELD_NAMES = [
    "id",
    "topic",
    "source",
    "subject",
    "eventType",
    "type",
    "specversion",
    "eventTime",
    "time",
    "data",
    "Id",
    "VaultName",
    "ObjectType",
    "ObjectName",
    "Version",
    "NBF",
    "EXP",
]
field_names = st.sampled_from(FIELD_NAMES) | st.text(max_size=12)
bad_versions = st.text(max_size=40) | versions.map(str.upper) | st.just("0" * 32) | st.just(ARABIC_ZEROS)
type_fields = st.sampled_from(["eventType", "type", "specversion"])
type_values = st.sampled_from([*KEY_TYPES, *OTHER_TYPES, "1.0", "0.3"]) | json_values


def outcome(parse: Callable[[str], KeyUrl], text: str) -> KeyUrl | InvalidKeyUrl:
    """The parsed value, or the InvalidKeyUrl raised."""
    try:
        return parse(text)
    except InvalidKeyUrl as exc:
        return exc


def fold(obj: dict[Any, Any]) -> dict[str, Any]:
    """An independent case-insensitive view of a dict, for the oracle."""
    return {k.strip().lower(): v for k, v in obj.items() if isinstance(k, str)}


@st.composite
def styled(draw: st.DrawFn, name: str) -> str:
    """A field name in one of the spellings the parser must accept."""
    style = draw(st.sampled_from(["as-is", "lower", "upper", "camel", "padded"]))
    if not name:
        return name
    if style == "lower":
        return name.lower()
    if style == "upper":
        return name.upper()
    if style == "camel":
        return name[0].lower() + name[1:]
    if style == "padded":
        return draw(st.sampled_from([" ", ""])) + name + draw(st.sampled_from([" ", "\t", ""]))
    return name


def recase(draw: st.DrawFn, text: str) -> str:
    """``text`` as is, upper-cased or lower-cased."""
    return draw(st.sampled_from([text, text.upper(), text.lower()]))


@dataclass(frozen=True)
class Expected:
    """What a valid generated event must parse to."""

    key_url: KeyUrl
    kind: EventKind
    schema: str
    event_id: str
    source: str
    not_before: datetime | None
    expires_on: datetime | None


def unix_value(draw: st.DrawFn, seconds: int) -> object:
    """Unix seconds as the wire may carry them: int, float, numeric string (padded)."""
    form = draw(st.sampled_from(["int", "float", "str", "str-frac"]))
    if form == "int":
        return seconds
    if form == "float":
        return seconds + draw(st.sampled_from([0.0, 0.25, 0.5, 0.999]))
    if form == "str":
        return draw(paddings) + str(seconds) + draw(paddings)
    return f"{seconds}.{draw(st.integers(0, 999))}"


def pad(draw: st.DrawFn, value: str) -> str:
    """The value with tolerated surrounding whitespace."""
    return draw(paddings) + value + draw(paddings)


def valid_data(
    draw: st.DrawFn, url: str, parts: tuple[str, str, str]
) -> tuple[dict[str, Any], dict[str, datetime | None]]:
    """Event data for ``url`` with random optional fields; also the NBF/EXP times it must parse to."""
    vault, name, version = parts
    data: dict[str, Any] = {draw(styled("Id")): pad(draw, url)}
    for field, value in (
        ("VaultName", vault),
        ("ObjectName", name),
        ("Version", version),
        ("ObjectType", "Key"),
    ):
        if draw(st.booleans()):
            data[draw(styled(field))] = pad(draw, recase(draw, value))
    times: dict[str, datetime | None] = {}
    for field in ("NBF", "EXP"):
        form = draw(st.sampled_from(["value", "null", "absent"]))
        times[field] = None
        if form == "value":
            seconds = draw(unix_times)
            data[draw(styled(field))] = unix_value(draw, seconds)
            times[field] = datetime.fromtimestamp(seconds, UTC)
        elif form == "null":
            data[draw(styled(field))] = None
    return data, times


def envelope(draw: st.DrawFn, schema: str, event_type: str, source: str) -> dict[str, Any]:
    """The top-level fields of an event (without id and data) in the given schema."""
    event: dict[str, Any] = {}
    if schema == "cloudevents":
        event[draw(styled("specversion"))] = "1.0"
        event[draw(styled("type"))] = pad(draw, recase(draw, event_type))
        source_field, time_field = "source", "time"
    else:
        event[draw(styled("eventType"))] = pad(draw, recase(draw, event_type))
        source_field, time_field = "topic", "eventTime"
    if source:
        event[draw(styled(source_field))] = pad(draw, source)
    if draw(st.booleans()):
        event[draw(styled("subject"))] = draw(key_names)
    if draw(st.booleans()):
        when = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=draw(st.integers(0, 10**15)))
        event[draw(styled(time_field))] = when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "1Z"
    if draw(st.booleans()):  # an Event Grid dead-letter record
        event.update(
            deadLetterReason="MaxDeliveryAttemptsExceeded", deliveryAttempts=30, lastHttpStatusCode=500
        )
    return event


@st.composite
def valid_events(draw: st.DrawFn) -> tuple[dict[str, Any], Expected]:
    """A valid key event (either schema) with every tolerated variation, and what it must parse to."""
    vault, suffix, name, version = draw(vault_names), draw(suffixes), draw(key_names), draw(versions)
    host = recase(draw, vault + suffix)
    port = draw(st.sampled_from(["", ":443"]))
    trailing = draw(st.sampled_from(["", "/"]))
    url = f"{recase(draw, 'https')}://{host}{port}/keys/{name}/{recase(draw, version)}{trailing}"
    schema = draw(st.sampled_from(["eventgrid", "cloudevents"]))
    event_type = draw(st.sampled_from(sorted(KEY_TYPES)))
    event_id = draw(event_ids)
    data, times = valid_data(draw, url, (vault, name, version))
    source = ""
    if draw(st.booleans()):
        vault_type = "managedHSMs" if suffix == ".managedhsm.azure.net" else "vaults"
        source = f"/subscriptions/{draw(st.uuids())}/resourceGroups/rg-keys/providers/Microsoft.KeyVault/{vault_type}/{vault}"
    event = {draw(styled("id")): pad(draw, event_id), draw(styled("data")): data}
    event |= envelope(draw, schema, event_type, source)
    expected = Expected(
        key_url=KeyUrl(host.lower(), name, version),
        kind=KEY_TYPES[event_type],
        schema=schema,
        event_id=event_id,
        source=source,
        not_before=times["NBF"],
        expires_on=times["EXP"],
    )
    return event, expected


# --- key URLs built from good and bad pieces (each piece knows whether it is acceptable) ------------


@st.composite
def key_url_texts(draw: st.DrawFn) -> tuple[str, bool, KeyUrl | None]:
    """A URL assembled from pieces, whether parse_key_url must accept it, and the value it must give."""
    vault, suffix, name, version = draw(vault_names), draw(suffixes), draw(key_names), draw(versions)
    lead = draw(st.sampled_from([("", True), (" \t", True), ("x", False)]))
    scheme = draw(
        st.sampled_from([("https", True), ("HTTPS", True), ("http", False), ("ftp", False), ("", False)])
    )
    userinfo = draw(st.sampled_from([("", True), ("user@", False), ("user:pw@", False), ("@", False)]))
    host = draw(
        st.sampled_from(
            [
                (f"{vault}{suffix}", True),
                (f"{vault}{suffix}".upper(), True),
                (f"{vault}{suffix}.evil.example", False),
                (suffix[1:], False),
                (f"x.{vault}{suffix}", False),
                (f"{vault}.{suffix}", False),
                (f"{vault}{suffix}.", False),
                ("127.0.0.1", False),
                (f"{vault}\u0430{suffix}", False),
                (f"{vault}{suffix}".replace(".", "%2e"), False),
                ("", False),
            ]
        )
    )
    port = draw(
        st.sampled_from(
            [("", True), (":443", True), (":8443", False), (":", False), (":abc", False), (":0", False)]
        )
    )
    path: tuple[str, bool, str | None] = draw(
        st.sampled_from(
            [
                (f"/keys/{name}/{version}", True, version),
                (f"/keys/{name}/{version.upper()}", True, version),
                (f"/keys/{name}/{version}/", True, version),
                (f"/KEYS/{name}/{version}", True, version),
                (f"/keys/{name}", True, None),
                (f"/keys/{name}/", True, None),
                (f"/secrets/{name}/{version}", False, None),
                (f"/certificates/{name}/{version}", False, None),
                (f"/keys/{name}/{version}//", False, None),
                (f"//keys/{name}/{version}", False, None),
                (f"/keys/../keys/{name}/{version}", False, None),
                (f"/keys/{name}/{version[:-1]}", False, None),
                (f"/keys/{name}/{version}0", False, None),
                (f"/keys/{name}/{'g' * 32}", False, None),
                (f"/keys/{name}/{ARABIC_ZEROS}", False, None),
                (f"/keys/{name}/{version}/extra", False, None),
                (f"/keys/{name}%2F{version}", False, None),
                (f"/keys/{name}_x/{version}", False, None),
                ("", False, None),
                ("/", False, None),
            ]
        )
    )
    tail = draw(
        st.sampled_from(
            [
                ("", True),
                ("  ", True),
                ("\n", True),
                ("?api-version=7.4", False),
                ("#f", False),
                ("\x00", False),
            ]
        )
    )
    pieces = (lead, scheme, userinfo, host, port, tail)
    text = f"{lead[0]}{scheme[0]}://{userinfo[0]}{host[0]}{port[0]}{path[0]}{tail[0]}"
    ok = path[1] and all(piece[1] for piece in pieces)
    expected = KeyUrl(host[0].lower(), name, path[2]) if ok else None
    return text, ok, expected


@FAST
@given(key_url_texts())
def test_key_url_accepts_exactly_the_good_pieces(case: tuple[str, bool, KeyUrl | None]):
    """parse_key_url accepts a URL iff every piece is acceptable, and then yields the canonical value."""
    text, ok, expected = case
    parsed = outcome(parse_key_url, text)
    if isinstance(parsed, InvalidKeyUrl):
        assert not ok, f"{text!r} rejected: {parsed}"
        assert "\n" not in str(parsed)
    else:
        assert ok, f"{text!r} accepted"
        assert parsed == expected
        assert parse_key_url(str(parsed)) == parsed


@FAST
@given(st.text(max_size=200) | key_url_texts().map(lambda case: case[0]))
def test_key_url_never_raises_anything_else(text: str):
    """parse_key_url on any text returns a KeyUrl in an allowed domain or raises InvalidKeyUrl."""
    try:
        parsed = parse_key_url(text)
    except InvalidKeyUrl:
        return
    assert any(parsed.host.endswith(s) and len(parsed.host) > len(s) for s in DEFAULT_VAULT_SUFFIXES)
    assert parsed.version is None or HEX32.fullmatch(parsed.version)


# --- events -----------------------------------------------------------------------------------------


def check_consistent(event: KeyVersionEvent, raw: dict[str, Any]) -> None:
    """Assert a parsed event is safe and agrees with the raw event it came from."""
    host = event.key_url.host
    assert host == host.lower()
    assert any(host.endswith(s) and len(host) > len(s) for s in DEFAULT_VAULT_SUFFIXES)
    assert event.key_url.version is not None
    assert HEX32.fullmatch(event.key_url.version)
    assert parse_key_url(str(event.key_url), require_version=True) == event.key_url
    assert KEY_TYPES[event.event_type] is event.kind
    assert event.event_id
    assert event.event_id == event.event_id.strip()
    assert len(event.event_id) <= 256
    top = fold(raw)
    data = fold(top["data"])
    assert parse_key_url(data["id"]) == event.key_url
    checks = {"vaultname": event.key_url.vault_name, "objectname": event.key_url.name.lower()}
    checks |= {"version": event.key_url.version, "objecttype": "key"}
    for name, value in checks.items():
        if isinstance(data.get(name), str):
            assert data[name].strip().lower() == value
    for when in (event.event_time, event.not_before, event.expires_on):
        assert when is None or when.tzinfo is UTC
    if event.source:
        assert parse_vault_id(event.source).name.lower() == event.key_url.vault_name
        assert event.source in {str(top.get("topic", "")).strip(), str(top.get("source", "")).strip()}


def check_error(exc: EventRejected | EventIgnored | RejectedEvent | IgnoredEvent) -> None:
    """Assert a rejection or ignore carries a bounded one-line reason."""
    assert isinstance(exc.reason, str)
    assert exc.reason
    assert str(exc) == exc.reason
    assert "\n" not in exc.reason
    assert "\r" not in exc.reason
    assert len(exc.reason) < 600
    assert exc.event_id is None or isinstance(exc.event_id, str)


@SLOW
@given(valid_events())
def test_valid_events_round_trip(case: tuple[dict[str, Any], Expected]):
    """Every generated valid event parses to exactly the key URL, kind and times it was built from."""
    raw, expected = case
    event = parse_event(copy.deepcopy(raw))
    check_consistent(event, raw)
    assert event.key_url == expected.key_url
    assert str(event.key_url) == str(expected.key_url)
    assert (event.kind, event.schema, event.event_id) == (expected.kind, expected.schema, expected.event_id)
    assert event.source == expected.source
    assert (event.not_before, event.expires_on) == (expected.not_before, expected.expires_on)
    assert parse_payload([raw, raw]) == [event, event]


def mutate(draw: st.DrawFn, event: dict[str, Any]) -> dict[str, Any]:
    """Apply one structure-aware mutation to an event (top level or data)."""
    data = event.get(next((k for k in event if k.strip().lower() == "data"), "data"))
    data = data if isinstance(data, dict) else {}
    target: dict[str, Any] = data if draw(st.booleans()) else event
    key = draw(st.sampled_from(sorted(target))) if target else "id"
    op = draw(
        st.sampled_from(["drop", "add", "retype", "huge", "url", "version", "type", "recase", "duplicate"])
    )
    if op == "drop":
        target.pop(key, None)
    elif op == "recase":
        value = target.pop(key, None)
        target[draw(styled(key.strip()))] = value
    else:
        name, value = {
            "add": lambda: (draw(field_names), draw(json_values)),
            "retype": lambda: (key, draw(json_values)),
            "huge": lambda: (key, draw(huge_strings)),
            "url": lambda: (draw(styled("Id")), draw(key_url_texts())[0]),
            "version": lambda: (draw(styled("Version")), draw(bad_versions)),
            "type": lambda: (draw(type_fields), draw(type_values)),
            "duplicate": lambda: (key.upper() + " ", draw(json_values)),
        }[op]()
        (data if op in {"url", "version"} else target)[name] = value
    return event


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with one to three mutations applied."""
    event = copy.deepcopy(draw(valid_events())[0])
    for _ in range(draw(st.integers(1, 3))):
        event = mutate(draw, event)
    return event


@SLOW
@given(mutated_events())
def test_mutated_events_parse_consistently_or_fail_cleanly(raw: dict[str, Any]):
    """A mutated event gives a consistent KeyVersionEvent or EventRejected/EventIgnored, never another error."""
    try:
        event = parse_event(raw)
    except (EventRejected, EventIgnored) as exc:
        check_error(exc)
    else:
        check_consistent(event, raw)


@FEW
@given(valid_events(), st.data())
def test_ambiguous_duplicate_fields_are_rejected(case: tuple[dict[str, Any], Expected], data: st.DataObject):
    """Adding a second spelling of an existing field with a different value always rejects the event."""
    raw = copy.deepcopy(case[0])
    data_key = next(k for k in raw if k.strip().lower() == "data")
    target = raw[data_key] if data.draw(st.booleans()) else raw
    key = data.draw(st.sampled_from(sorted(target)))
    target[f" {key.strip().swapcase()} "] = data.draw(json_values.filter(lambda v: v != target[key]))
    (result,) = parse_payload(raw)
    assert isinstance(result, RejectedEvent), f"ambiguous {key!r} accepted"
    check_error(result)
    assert "ambiguous" in result.reason


@FAST
@given(json_values)
def test_parse_payload_never_raises_on_any_json(raw: object):
    """parse_payload on any JSON value returns one result per event and raises nothing."""
    results = parse_payload(raw)
    expected_count = len(raw) if isinstance(raw, list) else 1
    assert len(results) == expected_count
    for result in results:
        if isinstance(result, KeyVersionEvent):
            continue
        assert isinstance(result, RejectedEvent | IgnoredEvent)
        check_error(result)


@FEW
@given(
    st.sampled_from(sorted(KEY_TYPES)),
    st.dictionaries(field_names, json_values, max_size=8) | json_values,
    st.dictionaries(field_names, json_leaves, max_size=4),
)
def test_key_events_with_arbitrary_data_never_crash(event_type: str, data: object, extra: dict[str, Any]):
    """A key event with arbitrary data and extra top-level fields parses cleanly or fails cleanly."""
    raw: dict[str, Any] = {**extra, "id": "e1", "eventType": event_type, "data": data}
    (result,) = parse_payload(raw)
    if isinstance(result, KeyVersionEvent):
        check_consistent(result, raw)
    else:
        check_error(result)
