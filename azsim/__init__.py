"""azsim: a local Azure simulator (ARM mongoClusters, Key Vault keys, managed identity, CONNECT proxy).

The unmodified Azure SDK reaches it through standard settings only (``HTTPS_PROXY``, ``NO_PROXY``,
``SSL_CERT_FILE``/``REQUESTS_CA_BUNDLE``, ``IDENTITY_ENDPOINT`` + ``IDENTITY_HEADER``).

aiohttp reads ``SSL_CERT_FILE`` once, when it is first imported, so create the CA first::

    from azsim.tls import ensure_ca                    # stdlib + cryptography only
    ca = ensure_ca(ca_dir)
    os.environ["SSL_CERT_FILE"] = str(ca.cert_path)     # before anything imports aiohttp
    from azsim.simulator import Simulator, Fault        # imports aiohttp

    with Simulator(ca_dir=ca_dir) as sim:
        os.environ.update(sim.env)
        ...

Importing this package imports nothing heavy; ``azsim.Simulator``, ``azsim.Fault`` and
``azsim.RequestRecord`` are resolved lazily (they import aiohttp).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from azsim.faults import Fault
    from azsim.messages import RequestRecord
    from azsim.simulator import Simulator

__all__ = ["Fault", "RequestRecord", "Simulator"]


def __getattr__(name: str) -> object:
    if name == "Simulator":
        from azsim.simulator import Simulator  # noqa: PLC0415 - lazy: imports aiohttp

        return Simulator
    if name == "Fault":
        from azsim.faults import Fault  # noqa: PLC0415

        return Fault
    if name == "RequestRecord":
        from azsim.messages import RequestRecord  # noqa: PLC0415

        return RequestRecord
    raise AttributeError(f"module 'azsim' has no attribute {name!r}")
