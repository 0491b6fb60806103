"""Raw ARM requests for the simulator's own tests: plain aiohttp with a managed-identity token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from azure.identity.aio import DefaultAzureCredential

API_VERSION = "2025-07-01-preview"
ARM = "https://management.azure.com"


@dataclass
class Answer:
    """One HTTP answer."""

    status: int
    headers: dict[str, str]
    body: Any


class ArmClient:
    """Plain aiohttp (trust_env=True, so through HTTPS_PROXY) with a managed-identity token."""

    def __init__(self, session: aiohttp.ClientSession, token: str) -> None:
        self.session = session
        self.token = token

    async def call(
        self,
        method: str,
        url: str,
        *,
        body: Any = None,
        api_version: str | None = API_VERSION,
        headers: dict[str, str] | None = None,
        token: str | None = "default",  # noqa: S107 - a marker, not a secret
    ) -> Answer:
        """Send one request (a path is taken relative to ARM); the body is parsed as JSON when present."""
        full = url if url.startswith("https://") else ARM + url
        params = {"api-version": api_version} if api_version and "api-version" not in full else None
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {self.token if token == 'default' else token}"
        async with self.session.request(method, full, json=body, params=params, headers=sent) as resp:
            text = await resp.text()
            parsed = await resp.json(content_type=None) if text else None
            return Answer(resp.status, {k.lower(): v for k, v in resp.headers.items()}, parsed)


@pytest.fixture
async def arm_client(credential: DefaultAzureCredential) -> AsyncIterator[ArmClient]:
    """An ARM client for raw requests."""
    token = await credential.get_token("https://management.azure.com/.default")
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(trust_env=True, connector=connector) as session:
        yield ArmClient(session, token.token)
