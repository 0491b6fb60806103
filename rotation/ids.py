"""ARM resource ids and Key Vault key URLs: parse once, strictly, into frozen values.

Nothing else in the code base splits an id or a URL: it calls one of the parsers here (or, for a URL an
answer hands over, `rotation.url_guard`), which either return a value whose parts are valid or raise with a
one-line reason naming the part that is wrong.
Quoted input is truncated and ``repr()``-ed, so a hostile value cannot forge log lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rotation.untrusted import quote

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

DEFAULT_VAULT_SUFFIXES: tuple[str, ...] = (
    ".vault.azure.net",
    ".vault.azure.cn",
    ".vault.usgovcloudapi.net",
    ".managedhsm.azure.net",
)

MAX_RESOURCE_ID_LENGTH = 1024
MAX_KEY_URL_LENGTH = 2048
_ASCII_WHITESPACE = " \t\r\n\f\v"

_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# ARM: 1-90 characters of letters, digits, underscore, parentheses, hyphen and period; not ending in '.'.
_RESOURCE_GROUP = re.compile(r"[A-Za-z0-9_().-]{0,89}[A-Za-z0-9_()-]")
_NAMESPACE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9]*)+")
_RESOURCE_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9]*")
# Generic ARM resource name: the characters every provider accepts, not ending in '.'.
_GENERIC_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_().-]{0,258}[A-Za-z0-9_()-]|[A-Za-z0-9_]")
_CLUSTER_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,38}[a-z0-9]", re.IGNORECASE)
_IDENTITY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{2,127}")
# Key Vault and Managed HSM names: 3-24 letters, digits and hyphens; start with a letter, end with a
# letter or digit, no consecutive hyphens (checked separately).
_VAULT_NAME = re.compile(r"[a-z][a-z0-9-]{1,22}[a-z0-9]", re.IGNORECASE)
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_KEY_NAME = re.compile(r"[A-Za-z0-9-]{1,127}")
_VERSION = re.compile(r"[0-9a-fA-F]{32}")
_PORT = re.compile(r"[0-9]{1,5}")
_HTTPS_PORT = 443
_VERSIONED_SEGMENTS = 3  # keys/{name}/{version}
_MAX_HOST_LENGTH = 253

CLUSTER_TYPE = ("Microsoft.DocumentDB", "mongoClusters")
_IDENTITY = ("Microsoft.ManagedIdentity", "userAssignedIdentities")
_VAULT_NAMESPACE = "Microsoft.KeyVault"
_VAULT_TYPES = ("vaults", "managedHSMs")
_SHAPE = "/subscriptions/{sub}/resourceGroups/{rg}/providers/{namespace}/{type}/{name}"
_SEGMENTS = _SHAPE.count("/")
_TEMPLATE = "/subscriptions/{{sub}}/resourceGroups/{{rg}}/providers/{namespace}/{type}/{{name}}"


class InvalidResourceId(ValueError):
    """A string is not a valid ARM resource id of the expected kind; the message says why."""


class InvalidKeyUrl(ValueError):
    """A string is not a valid Key Vault key URL; the message says why.

    ``detail`` is the reason without the leading "key URL", for callers that name the field themselves
    (``data.Id host '...' is not in an allowed vault domain``).
    """

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail if detail is not None else message


def has_control_or_space(value: str) -> bool:
    """Whether ``value`` holds whitespace or a control character (URL parsers disagree on those)."""
    return any(ch <= " " or ch == "\x7f" for ch in value)


def is_https_port(port: str) -> bool:
    """Whether the port text of an authority is the default https port, 443 (the only one allowed)."""
    return bool(_PORT.fullmatch(port)) and int(port) == _HTTPS_PORT


def is_dns_name(host: str) -> bool:
    """Whether ``host`` (lower case) is a DNS name: at most 253 characters of valid labels."""
    return len(host) <= _MAX_HOST_LENGTH and all(_DNS_LABEL.fullmatch(label) for label in host.split("."))


@dataclass(frozen=True)
class ResourceId:
    """A parsed ARM resource id ``/subscriptions/{sub}/resourceGroups/{rg}/providers/{ns}/{type}/{name}``.

    Build it with :func:`parse_resource_id` (or one of the typed parsers); parts keep their given casing.
    ARM ids are case-insensitive: compare and key on :attr:`normalized`.
    """

    subscription: str
    resource_group: str
    namespace: str
    resource_type: str
    name: str

    def __str__(self) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
            f"/providers/{self.namespace}/{self.resource_type}/{self.name}"
        )

    @property
    def normalized(self) -> str:
        """The id lower-cased, for comparisons and storage keys."""
        return str(self).lower()


def _check_text(value: object, max_length: int, error: Callable[[str], ValueError]) -> str:
    """Trim surrounding ASCII whitespace and reject text no id or URL can contain; return the trimmed text.

    ``error`` turns a reason ("is empty") into the exception to raise.
    """
    if not isinstance(value, str):
        raise error(f"is not a string (got {type(value).__name__})")
    text = value.strip(_ASCII_WHITESPACE)
    problem: str | None = None
    if not text:
        problem = "is empty"
    elif len(text) > max_length:
        problem = f"is longer than {max_length} characters"
    elif not text.isascii():
        problem = "contains non-ASCII characters"
    elif has_control_or_space(text):
        problem = "contains whitespace or control characters"
    elif "%" in text:
        problem = "contains percent-encoding"
    elif "\\" in text:
        problem = "contains a backslash"
    elif "?" in text or "#" in text:
        problem = "contains a query or fragment"
    if problem is not None:
        raise error(f"{problem}: {quote(text)}" if text else problem)
    return text


def _resource_id_error(detail: str) -> InvalidResourceId:
    return InvalidResourceId(f"resource id {detail}")


def _split_resource_id(text: str, expected: str | None, label: str) -> list[str]:
    """Return the eight segments of ``text`` with the fixed ones checked, or raise with the reason."""
    if not text.startswith("/"):
        raise _resource_id_error(f"is not absolute (must start with '/subscriptions/'): {quote(text)}")
    segments = text[1:].removesuffix("/").split("/")
    if any(segment == "" for segment in segments):
        raise _resource_id_error(f"contains an empty segment ('//'): {quote(text)}")
    if any(segment in {".", ".."} for segment in segments):
        raise _resource_id_error(f"contains a '.' or '..' segment: {quote(text)}")
    if len(segments) != _SEGMENTS:
        kind = "extra segments (a child resource?)" if len(segments) > _SEGMENTS else "missing segments"
        if expected is not None:
            raise InvalidResourceId(f"not a {label} resource id: {kind}; expected {expected}")
        raise _resource_id_error(f"has {kind}: expected {_SHAPE}")
    for index, literal in ((0, "subscriptions"), (2, "resourceGroups"), (4, "providers")):
        if segments[index].lower() != literal.lower():
            raise _resource_id_error(f"segment {index + 1} is {quote(segments[index])}, expected {literal!r}")
    return segments


def parse_resource_id(
    value: str,
    *,
    namespace: str | None = None,
    resource_type: str | None = None,
) -> ResourceId:
    """Parse a top-level ARM resource id, optionally requiring a provider namespace and resource type.

    Accepts any casing of the fixed segments, one trailing slash and surrounding whitespace. Rejects
    child resources, missing or empty segments, ``.``/``..`` segments, query strings, fragments,
    percent-encoding, whitespace, control and non-ASCII characters, more than 1024 characters, a
    subscription that is not a GUID, and resource group or resource names outside the ARM rules.
    Namespace and type are compared case-insensitively. Raises :class:`InvalidResourceId`.
    """
    types = (resource_type,) if resource_type is not None else None
    return _parse_resource_id(value, namespace, types, resource_type or namespace or "")


def _parse_resource_id(
    value: str,
    namespace: str | None,
    types: tuple[str, ...] | None,
    label: str,
) -> ResourceId:
    """Parse an id whose namespace (if given) and type (one of ``types``, if given) are fixed."""
    expected = (
        _TEMPLATE.format(namespace=namespace or "{namespace}", type="|".join(types or ("{type}",)))
        if label
        else None
    )
    text = _check_text(value, MAX_RESOURCE_ID_LENGTH, _resource_id_error)
    segments = _split_resource_id(text, expected, label)
    subscription, resource_group, ns, rtype, name = (segments[i] for i in (1, 3, 5, 6, 7))
    problem: str | None = None
    if not _GUID.fullmatch(subscription):
        problem = f"subscription {quote(subscription)} is not a GUID"
    elif not _RESOURCE_GROUP.fullmatch(resource_group):
        problem = (
            f"resource group name {quote(resource_group)} is invalid: 1-90 letters, digits, "
            "'_', '(', ')', '-' or '.', not ending in '.'"
        )
    elif not _NAMESPACE.fullmatch(ns):
        problem = f"provider namespace {quote(ns)} is invalid"
    elif not _RESOURCE_TYPE.fullmatch(rtype):
        problem = f"resource type {quote(rtype)} is invalid"
    elif (namespace is not None and ns.lower() != namespace.lower()) or (
        types is not None and rtype.lower() not in {t.lower() for t in types}
    ):
        problem = f"not a {label} resource id: expected {expected}"
    elif not _GENERIC_NAME.fullmatch(name):
        problem = f"resource name {quote(name)} is invalid"
    if problem is not None:
        raise InvalidResourceId(problem)
    return ResourceId(
        subscription=subscription,
        resource_group=resource_group,
        namespace=ns,
        resource_type=rtype,
        name=name,
    )


def parse_cluster_id(value: str) -> ResourceId:
    """Parse a ``Microsoft.DocumentDB/mongoClusters`` id; the name is 3-40 letters, digits and hyphens."""
    rid = parse_resource_id(value, namespace=CLUSTER_TYPE[0], resource_type=CLUSTER_TYPE[1])
    if not _CLUSTER_NAME.fullmatch(rid.name):
        raise InvalidResourceId(
            f"mongoClusters name {quote(rid.name)} is invalid: 3-40 lowercase letters, digits and hyphens, "
            "not starting or ending with a hyphen"
        )
    return rid


def parse_identity_id(value: str) -> ResourceId:
    """Parse a ``Microsoft.ManagedIdentity/userAssignedIdentities`` id."""
    rid = parse_resource_id(value, namespace=_IDENTITY[0], resource_type=_IDENTITY[1])
    if not _IDENTITY_NAME.fullmatch(rid.name):
        raise InvalidResourceId(
            f"userAssignedIdentities name {quote(rid.name)} is invalid: 3-128 letters, digits, "
            "'-' or '_', starting with a letter or digit"
        )
    return rid


def _valid_vault_name(name: str) -> bool:
    return _VAULT_NAME.fullmatch(name) is not None and "--" not in name


def parse_vault_id(value: str) -> ResourceId:
    """Parse a ``Microsoft.KeyVault/vaults`` or ``Microsoft.KeyVault/managedHSMs`` id."""
    rid = _parse_resource_id(value, _VAULT_NAMESPACE, _VAULT_TYPES, "Key Vault")
    if not _valid_vault_name(rid.name):
        raise InvalidResourceId(
            f"vault name {quote(rid.name)} is invalid: 3-24 letters, digits and hyphens, "
            "starting with a letter, no '--'"
        )
    return rid


def _valid_version(version: str) -> bool:
    return _VERSION.fullmatch(version) is not None


@dataclass(frozen=True)
class KeyUrl:
    """A Key Vault (or Managed HSM) key URL ``https://{host}/keys/{name}[/{version}]``.

    Build it with :func:`parse_key_url`. ``host`` is lower-case; ``version`` is 32 lowercase hex
    characters or ``None`` for a versionless URL.
    """

    host: str
    name: str
    version: str | None

    @property
    def vault_url(self) -> str:
        """The vault endpoint, ``https://{host}``."""
        return f"https://{self.host}"

    @property
    def vault_name(self) -> str:
        """The vault name: the first label of the host."""
        return self.host.split(".", 1)[0]

    @property
    def versionless(self) -> bool:
        """True when the URL names the key without a version."""
        return self.version is None

    def with_version(self, version: str) -> KeyUrl:
        """Return the same key at ``version`` (32 hex characters; normalised to lower case)."""
        if not _valid_version(version):
            raise _key_url_error(f"version {quote(version)} is not 32 hex characters")
        return KeyUrl(host=self.host, name=self.name, version=version.lower())

    def same_key(self, other: KeyUrl) -> bool:
        """True when both name the same key of the same vault (case-insensitive; versions ignored)."""
        return self.host.lower() == other.host.lower() and self.name.lower() == other.name.lower()

    def __str__(self) -> str:
        base = f"https://{self.host}/keys/{self.name}"
        return base if self.version is None else f"{base}/{self.version}"


def _normalize_suffixes(allowed_suffixes: Sequence[str]) -> tuple[str, ...]:
    """Lower-case the suffixes and give each its leading dot; blank ones never match anything."""
    if isinstance(allowed_suffixes, str):  # one suffix passed bare: not a sequence of one-letter suffixes
        allowed_suffixes = (allowed_suffixes,)
    out: list[str] = []
    for raw in allowed_suffixes:
        suffix = raw.strip().lower()
        if suffix and suffix != ".":
            out.append(suffix if suffix.startswith(".") else "." + suffix)
    return tuple(out)


def _key_url_error(detail: str) -> InvalidKeyUrl:
    return InvalidKeyUrl(f"key URL {detail}", detail=detail)


def _split_authority(authority: str) -> str:
    """Return the host of ``authority``, rejecting user info and any port but 443."""
    if "@" in authority:
        raise _key_url_error(f"must not contain user info: {quote(authority)}")
    host = authority
    if ":" in authority:
        host, _, port = authority.rpartition(":")
        if not is_https_port(port):
            raise _key_url_error(f"port {quote(port)} is not allowed (only the default https port)")
    return host.lower()


def _check_host(host: str, suffixes: tuple[str, ...]) -> None:
    if not host:
        raise _key_url_error("has no host")
    labels = host.split(".")
    if any(label == "" for label in labels):
        raise _key_url_error(f"host {quote(host)} has an empty label")
    if not is_dns_name(host):
        raise _key_url_error(f"host {quote(host)} is not a valid DNS name")
    suffix = next((s for s in suffixes if host.endswith(s) and len(host) > len(s)), None)
    if suffix is None:
        raise _key_url_error(f"host {quote(host)} is not in an allowed vault domain")
    vault = host[: -len(suffix)]
    if "." in vault:
        raise _key_url_error(f"host {quote(host)} has more than one label before {suffix!r}")
    if not _valid_vault_name(vault):
        raise _key_url_error(
            f"vault name {quote(vault)} is invalid: 3-24 letters, digits and hyphens, "
            "starting with a letter, no '--'"
        )


def parse_key_url(
    value: str,
    *,
    allowed_suffixes: Sequence[str] = DEFAULT_VAULT_SUFFIXES,
    require_version: bool = False,
) -> KeyUrl:
    """Parse a Key Vault key URL, strictly.

    https only; no user info, port (``:443`` is dropped), query or fragment; the host must end with one of
    ``allowed_suffixes`` with exactly one vault-name label before it; the path is ``/keys/{name}`` or
    ``/keys/{name}/{version}`` with at most one trailing slash; the version is 32 hex characters
    (normalised to lower case). Surrounding whitespace is trimmed. Raises :class:`InvalidKeyUrl`.
    """
    text = _check_text(value, MAX_KEY_URL_LENGTH, _key_url_error)
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise _key_url_error(f"is not an absolute https URL: {quote(text)}")
    if scheme.lower() != "https":
        raise _key_url_error(f"scheme {quote(scheme)} is not https")
    authority, slash, path = rest.partition("/")
    host = _split_authority(authority)
    _check_host(host, _normalize_suffixes(allowed_suffixes))
    segments = (slash + path).removesuffix("/").split("/")[1:] if path else []
    if any(segment in {".", ".."} for segment in segments):
        raise _key_url_error(f"path contains a '.' or '..' segment: {quote(slash + path)}")
    if (
        len(segments) not in {_VERSIONED_SEGMENTS - 1, _VERSIONED_SEGMENTS}
        or segments[0].lower() != "keys"
        or "" in segments
    ):
        raise _key_url_error(
            f"path {quote(slash + path)} is not /keys/{{name}} or /keys/{{name}}/{{version}}"
        )
    name = segments[1]
    if not _KEY_NAME.fullmatch(name):
        raise _key_url_error(f"key name {quote(name)} is invalid: 1-127 letters, digits and hyphens")
    version: str | None = None
    if len(segments) == _VERSIONED_SEGMENTS:
        if not _valid_version(segments[2]):
            raise _key_url_error(f"version {quote(segments[2])} is not 32 hex characters")
        version = segments[2].lower()
    elif require_version:
        raise _key_url_error(f"has no version: {quote(text)}")
    return KeyUrl(host=host, name=name, version=version)
