"""Azurite for the storage tests: the session's one Azurite, shared with every other test.

Tests isolate themselves with unique table and queue names (`unique_name`), never by restarting Azurite.
"""

from __future__ import annotations

import uuid

import pytest

from azsim.azurite import Azurite


@pytest.fixture(scope="session")
def azurite_server(azurite: Azurite) -> Azurite:
    """The session's one Azurite (the `azurite` fixture of tests/conftest.py), as the storage tests name it."""
    return azurite


def unique_name(prefix: str) -> str:
    """A table or queue name no other test uses (letters and digits, starting with a letter)."""
    return f"{prefix}{uuid.uuid4().hex[:16]}"
