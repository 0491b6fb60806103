"""Azurite for the storage tests: one process per test session, shared by every module that imports it.

Tests isolate themselves with unique table and queue names (`unique_name`), never by restarting Azurite.
"""

from __future__ import annotations

import atexit
import uuid

import pytest

from azsim.azurite import Azurite

_server: Azurite | None = None


def _shared() -> Azurite:
    global _server  # noqa: PLW0603 - one Azurite per process, whichever module asks first
    if _server is None:
        server = Azurite()
        server.start()
        atexit.register(server.stop)
        _server = server
    return _server


@pytest.fixture(scope="session")
def azurite_server() -> Azurite:
    """A running Azurite (started once per session)."""
    return _shared()


def unique_name(prefix: str) -> str:
    """A table or queue name no other test uses (letters and digits, starting with a letter)."""
    return f"{prefix}{uuid.uuid4().hex[:16]}"
