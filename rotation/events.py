"""Key Vault key events (Event Grid and CloudEvents schemas) parsed once into :class:`KeyVersionEvent`.

:func:`parse_event` takes one JSON-decoded event and either returns a frozen, validated event, raises
:class:`EventIgnored` (well-formed, but not a key event we act on) or raises :class:`EventRejected`
(malformed; retrying cannot fix it) with a one-line reason naming the field. Nothing else escapes it,
whatever the input. :func:`parse` and :func:`parse_payload` never raise: they answer with a `ParsedEvent`,
the event or the :class:`RejectedEvent` / :class:`IgnoredEvent` saying why not. Field names are matched
case-insensitively and with surrounding whitespace removed (published samples contain ``"ObjectName "``);
string values are trimmed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from azure.eventgrid import SystemEventNames

from rotation.ids import (
    DEFAULT_VAULT_SUFFIXES,
    InvalidKeyUrl,
    InvalidResourceId,
    KeyUrl,
    parse_key_url,
    parse_vault_id,
)
from rotation.untrusted import json_type, quote

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

MAX_EVENT_ID_LENGTH = 256
_MAX_UNIX_TIME = 253_402_300_799  # 9999-12-31T23:59:59Z
_MAX_SHOWN_INT_BITS = 128
_UNIX_TIME = re.compile(r"[0-9]{1,20}(?:\.[0-9]{1,20})?")
_ISO_TIME = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt](?P<h>[0-9]{2}):(?P<m>[0-9]{2}):(?P<s>[0-9]{2})"
    r"(?:\.(?P<frac>[0-9]{1,9}))?(?P<tz>[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_MICROSECOND_DIGITS = 6
_VERSION = re.compile(r"[0-9a-fA-F]{32}")


class EventKind(StrEnum):
    """What a key event tells the rotator."""

    NEW_VERSION = "new-version"
    NEAR_EXPIRY = "near-expiry"
    EXPIRED = "expired"


_KEY_EVENT_TYPES: dict[str, tuple[str, EventKind]] = {
    name.value.lower(): (name.value, kind)
    for name, kind in (
        (SystemEventNames.KeyVaultKeyNewVersionCreatedEventName, EventKind.NEW_VERSION),
        (SystemEventNames.KeyVaultKeyNearExpiryEventName, EventKind.NEAR_EXPIRY),
        (SystemEventNames.KeyVaultKeyExpiredEventName, EventKind.EXPIRED),
    )
}


@dataclass(frozen=True)
class KeyVersionEvent:
    """A validated Key Vault key event.

    ``key_url`` is the versioned key URL from ``data.Id``; ``source`` is the vault's ARM id from
    ``topic``/``source`` (``""`` when the record has none); times are timezone-aware UTC.
    """

    event_id: str
    event_type: str
    kind: EventKind
    schema: Literal["eventgrid", "cloudevents"]
    source: str
    subject: str
    event_time: datetime | None
    key_url: KeyUrl
    not_before: datetime | None
    expires_on: datetime | None


class EventRejected(ValueError):
    """A malformed event: acknowledge it (retrying cannot fix it) and log the reason at ERROR."""

    def __init__(self, reason: str, *, event_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.event_id = event_id


class EventIgnored(Exception):
    """A well-formed event the rotator does not act on (secret, certificate or vault-policy events)."""

    def __init__(self, reason: str, *, event_id: str | None = None, event_type: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.event_id = event_id
        self.event_type = event_type


@dataclass(frozen=True)
class RejectedEvent:
    """A malformed event, as a value: acknowledged (retrying cannot fix it) and logged at ERROR."""

    reason: str
    event_id: str | None = None

    def __str__(self) -> str:
        """The one-line reason."""
        return self.reason


@dataclass(frozen=True)
class IgnoredEvent:
    """A well-formed event the rotator does not act on, as a value."""

    reason: str
    event_id: str | None = None
    event_type: str | None = None

    def __str__(self) -> str:
        """The one-line reason."""
        return self.reason


ParsedEvent = KeyVersionEvent | RejectedEvent | IgnoredEvent  # what `parse` makes of one event


class _Bad(Exception):
    """A rejection reason raised by the field checks below."""


def _fold(raw: Mapping[object, object], where: str) -> tuple[dict[str, object], str | None]:
    """Map stripped, lower-cased field names to values; also return a reason if two names collide."""
    folded: dict[str, object] = {}
    original: dict[str, str] = {}
    conflict: str | None = None
    for key, value in raw.items():
        if not isinstance(key, str):
            continue
        name = key.strip().lower()
        if name in folded and folded[name] != value and conflict is None:
            conflict = f"{where} has ambiguous fields {quote(original[name])} and {quote(key)}"
        folded.setdefault(name, value)
        original.setdefault(name, key)
    return folded, conflict


def _string(fields: Mapping[str, object], name: str, label: str, *, required: bool = False) -> str | None:
    """Return the trimmed string field ``name`` (None if absent or null)."""
    value = fields.get(name.lower())
    if value is None:
        if required:
            raise _Bad(f"{label} is missing")
        return None
    if not isinstance(value, str):
        raise _Bad(f"{label} is not a string (got {json_type(value)})")
    return value.strip()


def _event_id(fields: Mapping[str, object]) -> str:
    event_id = _string(fields, "id", "id", required=True)
    if not event_id:
        raise _Bad("id is empty")
    if len(event_id) > MAX_EVENT_ID_LENGTH:
        raise _Bad(f"id is longer than {MAX_EVENT_ID_LENGTH} characters")
    if not event_id.isprintable():
        raise _Bad(f"id {quote(event_id)} contains control characters")
    return event_id


def _event_time(fields: Mapping[str, object], name: str) -> datetime | None:
    text = _string(fields, name, name)
    if not text:
        return None
    match = _ISO_TIME.fullmatch(text)
    if match is None:
        raise _Bad(f"{name} {quote(text)} is not an ISO 8601 time with a time zone")
    frac = (match["frac"] or "").ljust(_MICROSECOND_DIGITS, "0")[:_MICROSECOND_DIGITS]
    tz = match["tz"]
    try:
        zone = UTC
        if tz not in {"Z", "z"}:
            sign = -1 if tz[0] == "-" else 1
            zone = timezone(sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
        parsed = datetime.fromisoformat(match["date"]).replace(
            hour=int(match["h"]),
            minute=int(match["m"]),
            second=int(match["s"]),
            microsecond=int(frac),
            tzinfo=zone,
        )
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise _Bad(f"{name} {quote(text)} is not a valid date and time") from None


def _shown_number(value: object) -> str:
    if isinstance(value, int) and value.bit_length() > _MAX_SHOWN_INT_BITS:
        return f"<{value.bit_length()}-bit integer>"
    return quote(str(value))


def _unix_time(fields: Mapping[str, object], name: str) -> datetime | None:
    """Parse ``data.NBF``/``data.EXP``: Unix seconds as a number or numeric string; null/absent is None."""
    label = f"data.{name}"
    value = fields.get(name.lower())
    seconds: int
    if value is None:
        return None
    if isinstance(value, bool):
        raise _Bad(f"{label} {value!r} is not a Unix time")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Bad(f"{label} {quote(str(value))} is not a Unix time")
        seconds = math.floor(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if not _UNIX_TIME.fullmatch(text):
            raise _Bad(f"{label} {quote(text)} is not a Unix time")
        seconds = int(text.partition(".")[0])
    else:
        raise _Bad(f"{label} is not a Unix time (got {json_type(value)})")
    if not 0 <= seconds <= _MAX_UNIX_TIME:
        raise _Bad(f"{label} {_shown_number(value)} is out of range (0 to year 9999)")
    return datetime.fromtimestamp(seconds, UTC)


def _key_url(data: Mapping[str, object], allowed_suffixes: Sequence[str]) -> KeyUrl:
    """Parse and cross-check the key fields of ``data``: Id, ObjectType, VaultName, ObjectName, Version."""
    object_type = _string(data, "ObjectType", "data.ObjectType")
    if object_type is not None and object_type.lower() != "key":
        raise _Bad(f"data.ObjectType {quote(object_type)} is not 'Key'")
    raw_id = _string(data, "Id", "data.Id", required=True)
    try:
        key_url = parse_key_url(raw_id or "", allowed_suffixes=allowed_suffixes, require_version=True)
    except InvalidKeyUrl as exc:
        raise _Bad(f"data.Id {exc.detail}") from None
    vault_name = _string(data, "VaultName", "data.VaultName")
    if vault_name is not None and vault_name.lower() != key_url.vault_name:
        raise _Bad(
            f"data.VaultName {quote(vault_name)} does not match data.Id vault {quote(key_url.vault_name)}"
        )
    object_name = _string(data, "ObjectName", "data.ObjectName")
    if object_name is not None and object_name.lower() != key_url.name.lower():
        raise _Bad(f"data.ObjectName {quote(object_name)} does not match data.Id key {quote(key_url.name)}")
    version = _string(data, "Version", "data.Version")
    if version is not None:
        if not _VERSION.fullmatch(version):
            raise _Bad(f"data.Version {quote(version)} is not 32 hex characters")
        if version.lower() != key_url.version:
            shown = quote(key_url.version or "")
            raise _Bad(f"data.Version {quote(version)} does not match data.Id version {shown}")
    return key_url


def _source(fields: Mapping[str, object], name: str, key_url: KeyUrl) -> str:
    """Return the vault ARM id from topic/source (``""`` if absent), checked against the key's vault."""
    source = _string(fields, name, name)
    if not source:
        return ""
    try:
        vault = parse_vault_id(source)
    except InvalidResourceId as exc:
        raise _Bad(f"{name} is invalid: {exc}") from None
    if vault.name.lower() != key_url.vault_name:
        raise _Bad(
            f"{name} vault {quote(vault.name)} does not match data.Id vault {quote(key_url.vault_name)}"
        )
    return source


def _parse(
    top: dict[str, object],
    event_id: str,
    allowed_suffixes: Sequence[str],
) -> KeyVersionEvent:
    """Parse the folded top-level fields of an event whose id is known to be valid."""
    schema: Literal["eventgrid", "cloudevents"]
    if "specversion" in top:
        schema, type_field, source_field, time_field = "cloudevents", "type", "source", "time"
        spec = _string(top, "specversion", "specversion", required=True)
        if spec != "1.0":
            raise _Bad(f"specversion {quote(spec or '')} is not '1.0'")
    else:
        schema, type_field, source_field, time_field = "eventgrid", "eventType", "topic", "eventTime"
        if top.get("eventtype") is None:
            if top.get("type") is not None:
                raise _Bad("eventType is missing (a CloudEvents event needs specversion)")
            raise _Bad(
                "event has no type: neither eventType (Event Grid) nor specversion and type (CloudEvents)"
            )
    event_type = _string(top, type_field, type_field, required=True) or ""
    known = _KEY_EVENT_TYPES.get(event_type.lower())
    if known is None:
        raise EventIgnored(
            f"event type {quote(event_type)} is not a Key Vault key event",
            event_id=event_id,
            event_type=event_type,
        )
    canonical_type, kind = known
    data_raw = top.get("data")
    if data_raw is None:
        raise _Bad("data is missing")
    if not isinstance(data_raw, dict):
        raise _Bad(f"data is not an object (got {json_type(data_raw)})")
    data, conflict = _fold(data_raw, "data")
    if conflict is not None:
        raise _Bad(conflict)
    key_url = _key_url(data, allowed_suffixes)
    not_before = _unix_time(data, "NBF")
    expires_on = _unix_time(data, "EXP")
    return KeyVersionEvent(
        event_id=event_id,
        event_type=canonical_type,
        kind=kind,
        schema=schema,
        source=_source(top, source_field, key_url),
        subject=_string(top, "subject", "subject") or "",
        event_time=_event_time(top, time_field),
        key_url=key_url,
        not_before=not_before,
        expires_on=expires_on,
    )


def parse_event(raw: object, *, allowed_suffixes: Sequence[str] = DEFAULT_VAULT_SUFFIXES) -> KeyVersionEvent:
    """Parse one JSON-decoded event (Event Grid or CloudEvents schema, or an Event Grid dead-letter record).

    Returns the key event; raises :class:`EventIgnored` for other event types and :class:`EventRejected`,
    with a one-line reason naming the field, for anything malformed. Never raises anything else.
    """
    if not isinstance(raw, dict):
        raise EventRejected(f"event is not a JSON object (got {json_type(raw)})")
    top, conflict = _fold(raw, "event")
    try:
        event_id = _event_id(top)
    except _Bad as exc:
        raise EventRejected(conflict or str(exc)) from None
    if conflict is not None:
        raise EventRejected(conflict, event_id=event_id)
    try:
        return _parse(top, event_id, allowed_suffixes)
    except _Bad as exc:
        raise EventRejected(str(exc), event_id=event_id) from None


def parse(raw: object, *, allowed_suffixes: Sequence[str] = DEFAULT_VAULT_SUFFIXES) -> ParsedEvent:
    """:func:`parse_event`, answering with the rejection or ignore reason instead of raising it."""
    try:
        return parse_event(raw, allowed_suffixes=allowed_suffixes)
    except EventRejected as exc:
        return RejectedEvent(exc.reason, event_id=exc.event_id)
    except EventIgnored as exc:
        return IgnoredEvent(exc.reason, event_id=exc.event_id, event_type=exc.event_type)


def parse_payload(
    raw: object,
    *,
    allowed_suffixes: Sequence[str] = DEFAULT_VAULT_SUFFIXES,
) -> list[ParsedEvent]:
    """Parse a whole body or file: an array of events, one event object, or Event Grid dead-letter records.

    Each element is parsed on its own and errors are returned in place, so one bad event never hides the
    others. Never raises.
    """
    if isinstance(raw, dict):
        items: list[object] = [raw]
    elif isinstance(raw, list):
        items = list(raw)
    else:
        return [RejectedEvent("payload is not a JSON object or array")]
    return [parse(item, allowed_suffixes=allowed_suffixes) for item in items]


def event_from_eventgrid_fields(
    *,
    event_id: str,
    topic: str | None,
    subject: str | None,
    event_type: str,
    event_time: datetime | str | None,
    data: object,
    allowed_suffixes: Sequence[str] = DEFAULT_VAULT_SUFFIXES,
) -> KeyVersionEvent:
    """Parse the fields of a Functions ``EventGridEvent`` (``.id``, ``.topic``, ``.get_json()``, ...).

    A naive ``event_time`` (the Functions library drops the zone) is taken as UTC. Raises like
    :func:`parse_event`.
    """
    time_text: str | None
    if isinstance(event_time, datetime):
        aware = event_time if event_time.tzinfo is not None else event_time.replace(tzinfo=UTC)
        time_text = aware.isoformat()
    else:
        time_text = event_time
    raw: dict[str, object] = {
        "id": event_id,
        "topic": topic,
        "subject": subject,
        "eventType": event_type,
        "eventTime": time_text,
        "data": data,
    }
    return parse_event(raw, allowed_suffixes=allowed_suffixes)
