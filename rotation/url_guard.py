"""The URLs an answer hands over (an operation URL, a ``nextLink``): followed only when they pass here.

The ARM token goes with every request the rotator makes to ARM, so a URL taken from an answer is an input:
one strict parse, https on the configured host and port 443, no dot segments; an operation URL must also
be a DocumentDB operation of the cluster's own subscription. Anything else is `UnsafeUrl`, with the reason.
Quoted input is truncated and ``repr()``-ed, as in `rotation.ids`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import unquote

from rotation.ids import CLUSTER_TYPE, MAX_KEY_URL_LENGTH, has_control_or_space, is_dns_name, is_https_port
from rotation.untrusted import quote

if TYPE_CHECKING:
    from rotation.ids import ResourceId


class UnsafeUrl(ValueError):
    """A URL an answer handed over (an operation URL, a ``nextLink``) must not be followed; says why."""


# The operation URLs ARM's DocumentDB provider hands out for mongoClusters writes, as the REST spec's examples
# answer them (Azure/azure-rest-api-specs, specification/mongocluster/.../examples: ``Azure-AsyncOperation:
# .../locations/{loc}/mongoClusterAzureAsyncOperation/{id}``, ``Location: .../mongoClusterOperationResults
# /{id}``); the same two `rotation.azure.lro` follows.
OPERATION_TYPES = frozenset({"mongoclusterazureasyncoperation", "mongoclusteroperationresults"})
_OPERATION_SEGMENTS = 8  # subscriptions/{sub}/providers/Microsoft.DocumentDB/locations/{loc}/{type}/{id}
# A location or operation id, decoded: ARM's location names ("westeurope", or a display name such as
# "West Europe" percent-encoded), operation ids (GUIDs; some providers append "*" and hex). Nothing that
# could end a path segment, start a query or be read as markup.
_OPERATION_PART = re.compile(r"[A-Za-z0-9_.()* -]{1,128}")


def _origin(url: str) -> tuple[str, str]:
    """``(host, path)`` of an https URL after one strict parse; `UnsafeUrl` for anything ambiguous.

    Refused: text that is not a string, too long, or holds whitespace, control characters or a backslash
    (parsers disagree on those); a scheme other than https; user info; any port but 443; an empty or
    malformed host; a fragment.
    """
    if not isinstance(url, str) or len(url) > MAX_KEY_URL_LENGTH:
        raise UnsafeUrl("URL is not a string of at most 2048 characters")
    if has_control_or_space(url) or "\\" in url:
        raise UnsafeUrl(f"URL contains whitespace, a control character or a backslash: {quote(url)}")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "https":
        raise UnsafeUrl(f"URL is not https: {quote(url)}")
    authority_end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=-1)
    authority = rest if authority_end < 0 else rest[:authority_end]
    remainder = "" if authority_end < 0 else rest[authority_end:]
    if "@" in authority:
        raise UnsafeUrl(f"URL carries user info: {quote(url)}")
    host = authority
    if ":" in authority:
        host, _, port = authority.rpartition(":")
        if not is_https_port(port):
            raise UnsafeUrl(f"URL port {quote(port)} is not allowed (only 443): {quote(url)}")
    host = host.lower()
    if not is_dns_name(host):
        raise UnsafeUrl(f"URL host {quote(host)} is not a valid DNS name")
    if "#" in remainder:
        raise UnsafeUrl(f"URL has a fragment: {quote(url)}")
    path = remainder.partition("?")[0]
    return host, path


def check_same_origin(url: str, endpoint: str) -> str:
    """The path of ``url`` when it is an https URL on ``endpoint``'s host and port; `UnsafeUrl` otherwise.

    Guards every URL an answer hands over before the ARM token goes with it: one strict parse of each,
    then scheme, host and port compared (the default port, 443, is the only one allowed).
    """
    host, path = _origin(url)
    expected, _ = _origin(endpoint)
    if host != expected:
        raise UnsafeUrl(f"URL host {quote(host)} is not the ARM endpoint {expected!r}")
    if any(segment in {".", ".."} for segment in path.split("/")):
        raise UnsafeUrl(f"URL path contains a '.' or '..' segment: {quote(path)}")
    return path


def check_operation_path(path: str, cluster: ResourceId) -> str:
    """The operation type ``path`` names, or "" for ``cluster``'s own path; `UnsafeUrl` for anything else.

    The one grammar of the URLs a write's answer may hand over (followed by `rotation.azure.lro`) and a
    check job may carry: ``/subscriptions/{sub}/providers/Microsoft.DocumentDB/locations/{loc}/{type}/{id}``
    in the cluster's subscription, ``type`` one of `OPERATION_TYPES`, or the cluster's resource path (a
    write answered without an operation header is followed by reading the resource). Compared
    case-insensitively, as ARM paths are, after percent-decoding (as the server reads it); a trailing slash
    is allowed. The type comes back lower case.
    """
    decoded = unquote(path)
    trimmed = decoded.removesuffix("/")
    if trimmed.lower() == str(cluster).lower():
        return ""
    segments = trimmed.split("/")[1:]
    low = [s.lower() for s in segments]
    if (
        len(segments) != _OPERATION_SEGMENTS
        or low[0] != "subscriptions"
        or low[2:5] != ["providers", CLUSTER_TYPE[0].lower(), "locations"]
        or low[6] not in OPERATION_TYPES
        or any(s in {".", ".."} or not _OPERATION_PART.fullmatch(s) for s in (segments[5], segments[7]))
    ):
        raise UnsafeUrl(f"operation path {quote(path)} is not a Microsoft.DocumentDB mongoCluster operation")
    if low[1] != cluster.subscription.lower():
        raise UnsafeUrl(
            f"operation path {quote(path)} is in subscription {quote(segments[1])}, not the cluster's "
            f"({cluster.subscription})"
        )
    return low[6]
