"""The command that fixes a failing (or warning) doctor check, for `rotation doctor` to print under it.

Each fix is one command an operator can paste: Azure CLI (``az``) for the vault, key and role
assignments (syntax from the Azure CLI reference: ``az role assignment create``, ``az keyvault update``,
``az keyvault set-policy``, ``az keyvault key set-attributes|create|rotate|rotation-policy update``), or this
CLI for the registry and rotations. Values the doctor knows (vault, key, identity principal, scopes) are
filled in; what it cannot know (the rotator's own principal) is an ``<placeholder>``. Pure: no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rotation.ids import InvalidKeyUrl, KeyUrl, parse_key_url
from rotation.key_rules import newest_not_usable

if TYPE_CHECKING:
    from rotation.doctor.facts import Facts

SERVICE_ENCRYPTION_USER = "Key Vault Crypto Service Encryption User"
ROTATOR = "<principal id of the rotator's identity>"
NEW_VERSION = (
    "az keyvault key create --vault-name {vault} --name {key} --kty RSA --size 3072 --ops wrapKey unwrapKey"
)


# Fixes that need only the vault and key names ({vault}, {key}, {url}: the key URL the cluster uses).
_TEMPLATES = {
    "vault.soft_delete": "az keyvault update --name {vault} --enable-soft-delete true",
    "vault.purge_protection": "az keyvault update --name {vault} --enable-purge-protection true",
    "vault.network": "az keyvault update --name {vault} --bypass AzureServices",
    "key.enabled": "az keyvault key set-attributes --id {url} --enabled true",
    "key.active": NEW_VERSION,
    "key.type": NEW_VERSION,
    "key.operations": NEW_VERSION,
    "key.exists": NEW_VERSION,
    "key.expiry": "az keyvault key rotate --vault-name {vault} --name {key}",
    "key.rotation_policy": (
        "az keyvault key rotation-policy update --vault-name {vault} --name {key} "
        "--value rotation-policy.json"
    ),
}


def fix_for(check: str, facts: Facts) -> str | None:  # noqa: PLR0911 - one answer per kind of check
    """The command that fixes ``check`` for the cluster of ``facts`` (None: no single command does)."""
    cluster_id = facts.cluster_id
    if check in {"cluster.exists", "cluster.cmk"}:
        return f"python -m rotation unregister {cluster_id}"
    if check == "rotator.cluster_read":
        return f"az role assignment create --assignee-object-id {ROTATOR} --role Reader --scope {cluster_id}"
    key = _key(facts)
    if key is None:
        return None
    vault_id = _vault_id(facts)
    if check == "cluster.key_url":
        return f"python -m rotation rotate {cluster_id}"
    if check in {"vault.exists", "rotator.key_read"}:
        return (
            f'az role assignment create --assignee-object-id {ROTATOR} --role "Key Vault Reader" '
            f"--scope {vault_id or f'<resource id of vault {key.vault_name}>'}"
        )
    if check == "identity.key_access":
        return _grant_key_access(facts, key.vault_name, vault_id)
    if check == "key.newest":
        return _fix_newest(facts, key)
    template = _TEMPLATES.get(check)
    return template.format(vault=key.vault_name, key=key.name, url=key) if template else None


def _key(facts: Facts) -> KeyUrl | None:
    cluster = facts.cluster.value
    if cluster is None or cluster.key_url is None:
        return None
    try:
        return parse_key_url(cluster.key_url, allowed_suffixes=facts.allowed_suffixes)
    except InvalidKeyUrl:
        return None


def _vault_id(facts: Facts) -> str | None:
    if facts.vault is not None and facts.vault.value is not None:
        return facts.vault.value.id
    if facts.vault_id is not None and facts.vault_id.value:
        return facts.vault_id.value
    return None


def _grant_key_access(facts: Facts, vault: str, vault_id: str | None) -> str:
    identity = facts.identity.value if facts.identity is not None else None
    principal = identity.principal_id if identity is not None else "<principal id of the cluster's identity>"
    rbac = facts.vault.value.rbac_authorization if facts.vault is not None and facts.vault.value else True
    if not rbac:
        return (
            f"az keyvault set-policy --name {vault} --object-id {principal} "
            "--key-permissions get list wrapKey unwrapKey"
        )
    return (
        f"az role assignment create --assignee-object-id {principal} "
        f'--assignee-principal-type ServicePrincipal --role "{SERVICE_ENCRYPTION_USER}" '
        f"--scope {vault_id or f'<resource id of vault {vault}>'}"
    )


def _fix_newest(facts: Facts, key: KeyUrl) -> str:
    versions = facts.versions.value if facts.versions is not None else None
    problem = (
        newest_not_usable(versions, facts.now, current_version=key.version, full=facts.latest)
        if versions
        else None
    )
    if problem is not None and not problem.version.enabled:
        return f"az keyvault key set-attributes --id {problem.target_key_url} --enabled true"
    return NEW_VERSION.format(vault=key.vault_name, key=key.name)
