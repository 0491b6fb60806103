"""Azurite (blob, queue, table): one per session, shared by every test.

Tests isolate themselves with unique table and queue names (`unique_name`), never by restarting Azurite.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from azsim.azurite import Azurite


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """One Azurite (blob, queue, table) for the session, in memory, stopped at the end."""
    with Azurite() as server:
        yield server


def unique_name(prefix: str) -> str:
    """A table or queue name no other test uses (letters and digits, starting with a letter)."""
    return f"{prefix}{uuid.uuid4().hex[:16]}"
