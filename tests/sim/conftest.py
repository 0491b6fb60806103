"""The world the simulator's own tests share (the simulator and its CA are the session's, `tests.helpers`)."""

import pytest

from azsim.simulator import Simulator
from tests.helpers.world import World, make_world


@pytest.fixture
def world(sim: Simulator) -> World:
    """A vault with key ``cmk``, the key identity and ``id-other``, a CMK cluster ``orders`` and a service-managed one."""
    return make_world(
        sim, name="orders", tags={"team": "orders"}, other_identity="id-other", plain_cluster=True
    )
