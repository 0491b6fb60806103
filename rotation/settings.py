"""Configuration, read once from a mapping of environment variables (README, "Configuration")."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rotation.ids import DEFAULT_VAULT_SUFFIXES

if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_ARM_ENDPOINT = "https://management.azure.com"
DEFAULT_ARM_API_VERSION = "2025-07-01-preview"
DEFAULT_RECONCILE_SCHEDULE = "0 */15 * * * *"
WRITE_METHODS = ("put", "patch")
# The first api-version whose spec makes `properties.encryption` updatable and has MongoClusters_PatchCMK
# (Azure/azure-rest-api-specs, specification/mongocluster/.../examples/2025-08-01-preview/): before it the
# swagger (preview/2025-07-01-preview/mongoCluster.json) marks MongoClusterProperties.encryption
# x-ms-mutability [read, create] and MongoClusterUpdateProperties has no encryption.
PATCH_MIN_API_VERSION = "2025-08-01-preview"
STORAGE_SETTING = "AzureWebJobsStorage"
# The app setting that overrides host.json's extensions.queues.maxDequeueCount (the host's own convention:
# https://learn.microsoft.com/azure/azure-functions/functions-host-json#override-hostjson-values).
MAX_DEQUEUE_SETTING = "AzureFunctionsJobHost__extensions__queues__maxDequeueCount"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class SettingsError(ValueError):
    """A setting is present but unusable; the message names the setting."""


@dataclass(frozen=True)
class RetrySettings:
    """Bounds of the one retry layer (rule 6); extends the documented settings, never replaces them."""

    max_attempts: int = 6
    max_seconds: float = 120.0
    initial_wait: float = 1.0
    max_wait: float = 30.0


@dataclass(frozen=True)
class Settings:
    """Everything the rotator reads from its environment; the core never touches ``os.environ``."""

    storage_connection: str | None = None
    storage_identity: Mapping[str, str] = field(default_factory=dict)
    arm_endpoint: str = DEFAULT_ARM_ENDPOINT
    arm_api_version: str = DEFAULT_ARM_API_VERSION
    write_method: str = "put"  # ROTATION_WRITE_METHOD: put (the documented body) | patch (PatchCMK)
    allowed_vault_suffixes: tuple[str, ...] = DEFAULT_VAULT_SUFFIXES
    dry_run: bool = False
    max_concurrency: int = 16
    reconcile_schedule: str = DEFAULT_RECONCILE_SCHEDULE
    poll_budget_seconds: float = 240.0
    check_delay_seconds: float = 60.0
    arm_write_refill_per_s: float = 10.0  # ARM's write refill per subscription (rotation.azure.pacing)
    arm_read_refill_per_s: float = 25.0  # ARM's read refill per subscription
    arm_write_burst: int = 200  # ARM's write bucket per subscription (the budget shared by every process)
    arm_read_burst: int = 250  # ARM's read bucket per subscription
    retry: RetrySettings = field(default_factory=RetrySettings)
    # host.json's queues.maxDequeueCount (the delivery after which the host moves a job to the poison queue),
    # overridable as the Functions host reads it: app setting AzureFunctionsJobHost__extensions__queues__...
    max_dequeue_count: int = 5
    # Rule 8's claim: longer than one invocation's polling budget, shorter than an on-call's patience.
    claim_ttl_seconds: float = 900.0
    defer_seconds: float = 15.0  # a job whose cluster another worker holds comes back after this long
    # Defers of one job before it fails; never reached by a healthy system (a claim lapses at its TTL, and a
    # job is deferred at least until then whatever this says).
    max_defers: int = 40

    @property
    def arm_scope(self) -> str:
        """The token scope for ARM calls (``{endpoint}/.default``)."""
        return self.arm_endpoint.rstrip("/") + "/.default"

    @property
    def storage_configured(self) -> bool:
        """Whether a registry/queue storage account is configured at all."""
        return bool(self.storage_connection) or bool(self.storage_identity)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from ``env``; raise `SettingsError` naming the first bad value."""
        prefix = STORAGE_SETTING + "__"
        identity = {k[len(prefix) :]: v for k, v in env.items() if k.startswith(prefix) and v}
        suffixes = _suffixes(env.get("ROTATION_ALLOWED_VAULT_SUFFIXES"))
        endpoint = env.get("ROTATION_ARM_ENDPOINT", "").strip() or DEFAULT_ARM_ENDPOINT
        if not endpoint.startswith("https://"):
            raise SettingsError(f"ROTATION_ARM_ENDPOINT must be an https URL, got {endpoint!r}")
        retry = RetrySettings(
            max_attempts=_int(env, "ROTATION_RETRY_MAX_ATTEMPTS", RetrySettings.max_attempts, minimum=1),
            max_seconds=_float(env, "ROTATION_RETRY_MAX_SECONDS", RetrySettings.max_seconds),
            initial_wait=_float(env, "ROTATION_RETRY_INITIAL_WAIT", RetrySettings.initial_wait),
            max_wait=_float(env, "ROTATION_RETRY_MAX_WAIT", RetrySettings.max_wait),
        )
        api_version = env.get("ROTATION_ARM_API_VERSION", "").strip() or DEFAULT_ARM_API_VERSION
        return cls(
            storage_connection=env.get(STORAGE_SETTING, "").strip() or None,
            storage_identity=identity,
            arm_endpoint=endpoint.rstrip("/"),
            arm_api_version=api_version,
            write_method=_write_method(env, api_version),
            allowed_vault_suffixes=suffixes,
            dry_run=_bool(env, "ROTATION_DRY_RUN"),
            max_concurrency=_int(env, "ROTATION_MAX_CONCURRENCY", 16, minimum=1),
            reconcile_schedule=env.get("ROTATION_RECONCILE_SCHEDULE", "").strip()
            or DEFAULT_RECONCILE_SCHEDULE,
            poll_budget_seconds=_float(env, "ROTATION_POLL_BUDGET_SECONDS", 240.0),
            check_delay_seconds=_float(env, "ROTATION_CHECK_DELAY_SECONDS", 60.0),
            arm_write_refill_per_s=_float(env, "ROTATION_ARM_WRITE_REFILL_PER_S", 10.0, positive=True),
            arm_read_refill_per_s=_float(env, "ROTATION_ARM_READ_REFILL_PER_S", 25.0, positive=True),
            arm_write_burst=_int(env, "ROTATION_ARM_WRITE_BURST", 200, minimum=1),
            arm_read_burst=_int(env, "ROTATION_ARM_READ_BURST", 250, minimum=1),
            retry=retry,
            max_dequeue_count=_int(env, MAX_DEQUEUE_SETTING, 5, minimum=1),
            claim_ttl_seconds=_float(env, "ROTATION_CLAIM_TTL_SECONDS", 900.0, positive=True),
            defer_seconds=_float(env, "ROTATION_DEFER_SECONDS", 15.0, positive=True),
            max_defers=_int(env, "ROTATION_MAX_DEFERS", 40, minimum=0),
        )


def api_version_date(api_version: str) -> str | None:
    """The date of an ARM api-version (``2025-08-01-preview`` -> ``2025-08-01``); None if it has none."""
    match = re.fullmatch(r"(\d{4}-\d{2}-\d{2})(-[a-z]+)?", api_version.strip().lower())
    return match.group(1) if match else None


def _write_method(env: Mapping[str, str], api_version: str) -> str:
    """ROTATION_WRITE_METHOD, refused when the api-version cannot update encryption with a PATCH."""
    method = env.get("ROTATION_WRITE_METHOD", "").strip().lower() or "put"
    if method not in WRITE_METHODS:
        raise SettingsError(f"ROTATION_WRITE_METHOD must be put or patch, got {method!r}")
    if method == "patch":
        date = api_version_date(api_version)
        minimum = api_version_date(PATCH_MIN_API_VERSION)
        if date is None or minimum is None or date < minimum:
            raise SettingsError(
                f"ROTATION_WRITE_METHOD=patch needs ROTATION_ARM_API_VERSION {PATCH_MIN_API_VERSION} or "
                f"later (encryption is not updatable by PATCH before it), got {api_version!r}"
            )
    return method


def _suffixes(raw: str | None) -> tuple[str, ...]:
    if raw is None or not raw.strip():
        return DEFAULT_VAULT_SUFFIXES
    out = []
    for item in raw.split(","):
        suffix = item.strip().lower()
        if not suffix:
            continue
        if not suffix.startswith("."):
            suffix = "." + suffix
        if suffix.count(".") < 2:  # noqa: PLR2004 - a bare TLD such as ".net" would allow any vault
            raise SettingsError(f"ROTATION_ALLOWED_VAULT_SUFFIXES entry {item.strip()!r} is too broad")
        out.append(suffix)
    if not out:
        raise SettingsError("ROTATION_ALLOWED_VAULT_SUFFIXES is set but lists no suffix")
    return tuple(out)


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, positive: bool = False) -> float:
    """A finite number from ``env``: at least 0, or above 0 when ``positive``."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    low_ok = value > 0 if positive else value >= 0
    if not low_ok or value == float("inf"):
        kind = "positive" if positive else "non-negative"
        raise SettingsError(f"{name} must be a finite, {kind} number, got {raw!r}")
    return value
