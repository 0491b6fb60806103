"""One ARM pipeline to one endpoint, the base of the ARM clients (`rotation.azure.arm`, `.arm_reads`).

azure-mgmt-core's async ARM pipeline with azure-core's retry off (rule 6: tenacity is the one layer). The
token never goes to another host, transport errors become `ServiceError`, each answer is bounded before it is
parsed, and requests wait for the per-subscription pacer when there is one.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.core.pipeline.policies import (
    AsyncRetryPolicy,
    DistributedTracingPolicy,
    HeadersPolicy,
    RequestIdPolicy,
    UserAgentPolicy,
)
from azure.core.rest import HttpRequest
from azure.mgmt.core import AsyncARMPipelineClient
from azure.mgmt.core.policies import ARMHttpLoggingPolicy, AsyncARMChallengeAuthenticationPolicy

from rotation.azure.pacing import ArmPacer, is_write, subscription_of
from rotation.errors import ServiceError
from rotation.untrusted import JsonRefused, check_json
from rotation.url_guard import UnsafeUrl, check_same_origin

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.core.pipeline.transport import AsyncHttpTransport
    from azure.core.rest import AsyncHttpResponse

USER_AGENT = "cmk-rotator/0.1"
MAX_ANSWER_BYTES = 4 * 1024 * 1024  # an ARM answer larger than this is refused, not read


class ArmConnection:
    """One ARM pipeline to one endpoint, shared by the ARM clients.

    The token never goes to another host, transport errors become `ServiceError`, and requests wait for the
    per-subscription pacer when there is one.
    """

    def __init__(
        self,
        endpoint: str,
        credential: AsyncTokenCredential,
        *,
        connection_timeout: float,
        read_timeout: float,
        pacer: ArmPacer | None = None,
        transport: AsyncHttpTransport[Any, Any] | None = None,
        deadline: float | None = None,
    ) -> None:
        self._endpoint = endpoint.rstrip("/")
        self._timeouts = {"connection_timeout": connection_timeout, "read_timeout": read_timeout}
        # The read timeout bounds each wait for a byte; this bounds the whole request (a trickled answer).
        self._deadline = deadline if deadline is not None else connection_timeout + read_timeout
        self._client = arm_pipeline(self._endpoint, credential, transport=transport)
        self.pacer = pacer

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.close()

    def _check_same_host(self, url: str) -> str:
        """The path of ``url``; refused unless on the configured endpoint (scheme, host, port 443)."""
        try:
            return check_same_origin(url, self._endpoint)
        except UnsafeUrl as exc:
            # 421 Misdirected Request: not an answer ARM gave, and never retried (the same URL stays refused).
            raise ServiceError(
                f"refused to follow {exc}", service="arm", status=421, code="UnsafeUrl"
            ) from None

    async def _request(
        self, method: str, url: str, *, params: dict[str, str] | None, json: dict[str, Any] | None
    ) -> AsyncHttpResponse:
        """Send one request (after the pacer allows it); `ServiceError` when no answer comes back."""
        request = HttpRequest(method, url, params=params, json=json)
        subscription = subscription_of(_path(url)) if self.pacer is not None else None
        ticket = None
        if self.pacer is not None and subscription is not None:
            ticket = await self.pacer.acquire(subscription, write=is_write(method))
        try:
            async with asyncio.timeout(self._deadline):
                response: AsyncHttpResponse = await self._client.send_request(
                    request,
                    connection_timeout=self._timeouts["connection_timeout"],
                    read_timeout=self._timeouts["read_timeout"],
                )
        except BaseException as exc:
            if self.pacer is not None and ticket is not None:
                self.pacer.release(ticket)  # no answer, no news about the budget
            if isinstance(exc, ServiceRequestError | ServiceResponseError):
                raise ServiceError(f"{method} {_path(url)}: {type(exc).__name__}", service="arm") from exc
            if isinstance(exc, TimeoutError):
                raise ServiceError(
                    f"{method} {_path(url)}: no complete answer within {self._deadline:g} s", service="arm"
                ) from None
            raise
        if self.pacer is not None and ticket is not None:
            self.pacer.observe(ticket, response.status_code, response.headers)
        try:
            check_json(response.content, what="ARM answer", max_bytes=MAX_ANSWER_BYTES)
        except JsonRefused as exc:
            raise ServiceError(
                f"{method} {_path(url)}: {exc}",
                service="arm",
                status=response.status_code,
                code="AnswerRefused",
            ) from None
        return response


def arm_pipeline(
    endpoint: str, credential: AsyncTokenCredential, *, transport: AsyncHttpTransport[Any, Any] | None = None
) -> AsyncARMPipelineClient[Any, Any]:
    """azure-mgmt-core's async ARM pipeline, azure-core's retry off (rule 6: tenacity is the one layer).

    ``transport``: the process's shared one (`rotation.azure.transport`); None gives the pipeline its own.
    """
    policies: list[Any] = [
        RequestIdPolicy(),
        HeadersPolicy({"Accept": "application/json"}),
        UserAgentPolicy(base_user_agent=USER_AGENT),
        # No ContentDecodePolicy: each caller parses the answer itself, after `check_json` bounded it.
        AsyncRetryPolicy(retry_total=0),
        AsyncARMChallengeAuthenticationPolicy(credential, endpoint.rstrip("/") + "/.default"),
        ARMHttpLoggingPolicy(),  # headers are redacted by azure-core; Authorization is never logged
        DistributedTracingPolicy(),
    ]
    if transport is None:
        return AsyncARMPipelineClient(base_url=endpoint.rstrip("/"), policies=policies)
    return AsyncARMPipelineClient(base_url=endpoint.rstrip("/"), policies=policies, transport=transport)


def _path(url: str) -> str:
    return urlsplit(url).path
