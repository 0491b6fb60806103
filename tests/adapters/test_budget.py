"""The shared ARM budget (rotation.store.budget) on Azurite: processes racing for one row, real ETags."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import pytest
from azure.data.tables.aio import TableServiceClient

from rotation.store.budget import PARTITION, TableBudget, row_key

SUB = "11111111-1111-1111-1111-111111111111"


async def test_processes_racing_on_table_storage_never_book_the_same_slot(azurite) -> None:
    """Real Table storage, real ETags: three ledgers reserving at once get slots one refill apart (burst 1)."""
    name = f"budget{uuid.uuid4().hex[:12]}"
    services = [TableServiceClient.from_connection_string(azurite.connection_string) for _ in range(3)]
    try:
        await services[0].create_table(name)
        ledgers = [TableBudget(s.get_table_client(name)) for s in services]
        grants = await asyncio.gather(
            *(ledger.reserve(SUB, write=True, count=4, refill_per_s=20.0, burst=1) for ledger in ledgers * 3)
        )
        slots = sorted(t for grant in grants for t in grant)
        assert len(slots) == 36
        gaps = [later - earlier for earlier, later in itertools.pairwise(slots)]
        assert min(gaps) >= 0.05 - 1e-6  # never two requests in one refill: no token was given twice
        assert slots[-1] - slots[0] <= 35 * 0.05 + 2.0  # and none lost: the row moved 36 refills, plus waits
        entity = await services[0].get_table_client(name).get_entity(PARTITION, row_key(SUB, write=True))
        assert entity["Tat"] == pytest.approx(slots[-1] + 0.05, abs=1e-6)
        # Nine reservations that all began on a missing row: one insert won, every other write lost a race
        # at least once, and each lost race cost this ledger a read and a write more (both counted).
        assert sum(ledger.races for ledger in ledgers) >= 8
        assert sum(ledger.requests for ledger in ledgers) >= 9 + 2 * 8
    finally:
        for s in services:
            await s.close()
