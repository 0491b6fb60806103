"""The one translation of an Azure error answer into `ServiceError`, and the one ``Retry-After`` reader.

Every adapter (ARM, Key Vault, Storage) ends here: the status picks `NotFoundError` (404) or `ServiceError`,
and the headers give the server's requested wait and the request ids support asks for. The pacer
(`rotation.azure.pacing`) reads the same ``Retry-After`` to block a subscription after a 429.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from rotation.errors import NotFoundError, ServiceError

if TYPE_CHECKING:
    from azure.core.exceptions import HttpResponseError
    from azure.core.rest import AsyncHttpResponse

_NOT_FOUND = 404
# Milliseconds first: azure-core's own retry policy prefers them too (``RetryPolicyBase._RETRY_HEADERS``).
_RETRY_AFTER_HEADERS = (("retry-after-ms", 1000.0), ("x-ms-retry-after-ms", 1000.0), ("Retry-After", 1.0))


def header(headers: Any, name: str) -> str | None:  # noqa: ANN401 - any case-insensitive mapping
    """The non-blank value of header ``name``, or None (also when ``headers`` is not a mapping)."""
    try:
        value = headers.get(name)
    except AttributeError:
        return None
    return value if isinstance(value, str) and value.strip() else None


def retry_after_seconds(headers: Any) -> float | None:  # noqa: ANN401 - any case-insensitive mapping
    """Return the server's requested wait in seconds, or None when it named none we can read.

    ``retry-after-ms`` and ``x-ms-retry-after-ms`` win over ``Retry-After`` (whole seconds). An HTTP date in
    ``Retry-After`` is not sent by ARM, Key Vault or Storage: it reads as None, and our own backoff applies.
    """
    for name, scale in _RETRY_AFTER_HEADERS:
        raw = header(headers, name)
        if raw is None:
            continue
        try:
            value = float(raw) / scale
        except ValueError:
            continue
        if math.isfinite(value) and value >= 0:
            return value
    return None


def service_error(
    message: str,
    *,
    service: str,
    status: int | None,
    code: str | None,
    headers: Any,  # noqa: ANN401 - any case-insensitive mapping
    not_found: bool | None = None,
) -> ServiceError:
    """The `ServiceError` for one error answer: `NotFoundError` on 404 (or when ``not_found`` says so).

    ``retry_after``, ``request_id`` and ``correlation_id`` come from the answer's headers.
    """
    kind = NotFoundError if (status == _NOT_FOUND if not_found is None else not_found) else ServiceError
    return kind(
        message,
        service=service,
        status=status,
        code=code,
        retry_after=retry_after_seconds(headers),
        request_id=header(headers, "x-ms-request-id"),
        correlation_id=header(headers, "x-ms-correlation-request-id"),
    )


def from_azure_error(
    exc: HttpResponseError, message: str, *, service: str, code: str | None, not_found: bool
) -> ServiceError:
    """Translate an azure-core `HttpResponseError` (which carries the answer) with `service_error`."""
    headers = getattr(exc.response, "headers", None) or {}
    return service_error(
        message, service=service, status=exc.status_code, code=code, headers=headers, not_found=not_found
    )


def raise_for_status(response: AsyncHttpResponse, *, service: str, what: str) -> None:
    """Raise the `ServiceError` for an answer of status 400 or more; return on success.

    The code and message come from the body's ``{"error": {"code", "message"}}`` (ARM's error shape).
    """
    status = response.status_code
    if status < 400:  # noqa: PLR2004
        return
    code, message = _error_body(response)
    fallback = f"{what} not found" if status == _NOT_FOUND else f"HTTP {status} for {what}"
    raise service_error(
        message or fallback, service=service, status=status, code=code, headers=response.headers
    )


def _error_body(response: AsyncHttpResponse) -> tuple[str | None, str | None]:
    try:
        doc = response.json()
    except ValueError:
        return None, None
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        return None, None
    return _str_or_none(error.get("code")), _str_or_none(error.get("message"))


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
