"""Application Insights for the app's own log records, when ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set.

The worker's records go through azure-monitor-opentelemetry, so every ``extra`` field of a record (event_id,
cluster_id, outcome, ...) becomes a custom dimension (``Properties`` in the ``AppTraces`` table) and the
KQL of docs/runbook.md filters on it. The host side is switched to OpenTelemetry by ``"telemetryMode":
"OpenTelemetry"`` in host.json, and the Python worker by the app setting ``PYTHON_ENABLE_OPENTELEMETRY=true``
(both set by infra/); see Microsoft's "Use OpenTelemetry with Azure Functions" (Python pivot). With local
authentication off (as infra/ deploys it), ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING`` is
``ClientId=<uami client id>;Authorization=AAD`` and the exporter authenticates with that managed identity.

Nothing is imported or configured when the setting is absent (local runs, tests): the import costs ~0.4 s.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

logger = logging.getLogger(__name__)
_configured = False


def _auth_credential(env: Mapping[str, str]) -> Any:  # noqa: ANN401 - an azure.identity credential
    """The managed identity named by ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING``, or None."""
    raw = env.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "")
    parts = dict(p.split("=", 1) for p in raw.split(";") if "=" in p)
    if parts.get("Authorization", "").upper() != "AAD":
        return None
    from azure.identity import ManagedIdentityCredential  # noqa: PLC0415

    return ManagedIdentityCredential(client_id=parts.get("ClientId") or None)


def configure_telemetry(env: Mapping[str, str]) -> bool:
    """Send the ``rotation`` loggers' records to Application Insights (once per process); False if unset."""
    global _configured  # noqa: PLW0603 - one exporter per process
    connection = env.get("APPLICATIONINSIGHTS_CONNECTION_STRING", "").strip()
    if _configured or not connection:
        return _configured
    from azure.monitor.opentelemetry import configure_azure_monitor  # noqa: PLC0415 - only when configured

    configure_azure_monitor(
        connection_string=connection,
        credential=_auth_credential(env),
        logger_name="rotation",
        enable_live_metrics=False,
    )
    _configured = True
    logger.info("rotation.telemetry_configured")
    return True
