"""The chaos run (scripts/chaos.py) at a small size: `make test` runs this, `make chaos` a bigger one."""

from __future__ import annotations

import pytest

from scripts.chaos import run_chaos
from tests.helpers.app import user_function

SEED = 20261128


@pytest.mark.slow
def test_small_chaos_run_has_no_violations(sim, azurite):
    """12 clusters, tied versions, duplicated events, faults, killed workers, forged jobs, Ctrl-C: no violation."""
    functions = {name: user_function(name) for name in ("on_key_event", "rotate_cluster")}
    report = run_chaos(12, SEED, sim=sim, connection=azurite.connection_string, functions=functions)
    assert report.violations == [], report.summary()
    assert report.clusters == 12
    assert report.deliveries >= report.events >= 9
    assert report.unusable_versions >= 1
    assert {"429", "500", "503", "reset"} & set(report.faults)
    assert report.retries > 0
    assert min(report.puts_per_cluster.values()) >= 1
    assert report.tokens_scanned >= 1
    assert report.tied_versions >= 1
    assert report.forged_messages >= 6
    assert report.rejected_jobs >= report.forged_messages
    assert report.forged_unrecorded >= 1
    assert report.not_followed >= report.forged_unrecorded
