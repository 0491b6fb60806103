"""Jobs of one large fan-out, as the batch tests build them."""

from __future__ import annotations

from rotation.store.jobs import Job

KEY = "https://kv1.vault.azure.net/keys/cmk/0123456789abcdef0123456789abcdef"


def cid(i: int, sub: str = "11111111-1111-1111-1111-111111111111") -> str:
    """A mongoClusters id numbered ``i``."""
    return f"/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.DocumentDB/mongoClusters/c-{i:04d}"


def event_jobs(n: int) -> list[Job]:
    """``n`` jobs of one event to one target, as a fan-out builds them."""
    return [Job.new(cid(i), trigger="event", target_key_url=KEY, event_id="ev-1") for i in range(n)]
