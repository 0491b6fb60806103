"""Body building, the write method setting, the not-updatable hint and the collateral diff, without I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from rotation.azure.lro import OperationKind, OperationUrlRefused, check_operation_url
from rotation.collateral import changed_paths
from rotation.engine import Rotator
from rotation.errors import ServiceError
from rotation.ids import parse_cluster_id
from rotation.outcomes import Outcome
from rotation.rotation_job import RotationRequest
from rotation.settings import Settings, SettingsError
from rotation.write_body import NOT_UPDATABLE_NEXT_STEP, build_body, build_patch_body, not_updatable
from tests.helpers.fakes import OTHER_UAMI, SUB, UAMI, FakeClusters, FakeKeys, cluster, key_url, key_version

CLUSTER = parse_cluster_id(
    f"/subscriptions/{SUB}/resourceGroups/rg-data/providers/Microsoft.DocumentDB/mongoClusters/orders-prod"
)
OPS = f"https://management.azure.com/subscriptions/{SUB}/providers/Microsoft.DocumentDB/locations/westeurope"
UPPER_443 = OPS.upper().replace("HTTPS://MANAGEMENT.AZURE.COM", "https://management.azure.com:443")


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("UserAssigned", "UserAssigned"),
        ("SystemAssigned,UserAssigned", "SystemAssigned,UserAssigned"),
        ("SystemAssigned, UserAssigned", "SystemAssigned, UserAssigned"),
        ("systemassigned,userassigned", "systemassigned,userassigned"),
        ("SystemAssigned", "SystemAssigned,UserAssigned"),
        (None, "UserAssigned"),
    ],
)
def test_identity_type_is_kept_and_a_system_identity_never_dropped(given, sent):
    """The identity type goes back as the cluster has it (any casing); SystemAssigned is never lost."""
    for build in (build_body, build_patch_body):
        assert build(cluster(identity_type=given), key_url(2))["identity"]["type"] == sent


def test_patch_body_is_the_patch_cmk_shape():
    """ROTATION_WRITE_METHOD=patch sends identity + encryption only (examples/.../MongoClusters_PatchCMK.json)."""
    body = build_patch_body(cluster(tags={"a": "b"}), key_url(2))
    assert set(body) == {"identity", "properties"}
    assert set(body["properties"]) == {"encryption"}
    assert body["identity"]["userAssignedIdentities"] == {UAMI: {}, OTHER_UAMI: {}}
    cmk = body["properties"]["encryption"]["customerManagedKeyEncryption"]
    assert cmk["keyEncryptionKeyUrl"] == str(key_url(2))


def test_put_body_sends_tags_back_and_nothing_else_of_the_get():
    """Rule 5 as amended: identity, location, tags and encryption; no systemData, no other property."""
    doc = {
        "tags": {"owner": "x"},
        "systemData": {"createdBy": "me"},
        "properties": {"compute": {"tier": "M30"}},
    }
    body = build_body(cluster(tags={"owner": "x"}, doc=doc), key_url(2))
    assert set(body) == {"identity", "location", "tags", "properties"}
    assert body["tags"] == {"owner": "x"}
    assert set(body["properties"]) == {"encryption"}


@pytest.mark.parametrize("api", ["2025-08-01-preview", "2025-09-01", "2026-06-01", "2026-06-15-preview"])
def test_patch_is_accepted_from_2025_08_01_preview_on(api):
    """ROTATION_WRITE_METHOD=patch with an api-version that can PATCH encryption is taken as given."""
    settings = Settings.from_env({"ROTATION_WRITE_METHOD": "PATCH", "ROTATION_ARM_API_VERSION": api})
    assert (settings.write_method, settings.arm_api_version) == ("patch", api)


@pytest.mark.parametrize("api", ["2025-07-01-preview", "2024-07-01", "latest"])
def test_patch_with_an_older_api_version_is_refused_in_one_line(api):
    """Start-up refuses patch before 2025-08-01-preview, naming both settings, in one line."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"ROTATION_WRITE_METHOD": "patch", "ROTATION_ARM_API_VERSION": api})
    message = str(info.value)
    assert "\n" not in message
    assert "ROTATION_WRITE_METHOD=patch" in message
    assert "2025-08-01-preview" in message
    assert api in message


def test_default_write_method_is_put_and_unknown_ones_are_refused():
    """Put is the default; anything but put or patch is a one-line settings error."""
    assert Settings.from_env({}).write_method == "put"
    with pytest.raises(SettingsError, match="ROTATION_WRITE_METHOD must be put or patch"):
        Settings.from_env({"ROTATION_WRITE_METHOD": "post"})


@pytest.mark.parametrize(
    ("status", "code", "message", "expected"),
    [
        (400, "BadRequest", "The property 'properties.encryption' cannot be updated.", True),
        (400, "PropertyChangeNotAllowed", "Changing property 'encryption' is not allowed.", True),
        (400, "InvalidRequestContent", "encryption is a create-only property", True),
        (400, "KeyVaultKeyDisabled", "The key is disabled.", False),
        (409, "Conflict", "cannot be updated while another operation runs", False),
    ],
)
def test_not_updatable_recognises_the_create_only_refusal(status, code, message, expected):
    """Only a 400 that says a property cannot be updated gets the api-version / write-method hint."""
    assert not_updatable(ServiceError(message, service="arm", status=status, code=code)) is expected
    assert "ROTATION_ARM_API_VERSION=2025-09-01" in NOT_UPDATABLE_NEXT_STEP


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        (f"{OPS}/mongoClusterAzureAsyncOperation/1?api-version=2025-09-01", OperationKind.ASYNC_OPERATION),
        (f"{OPS}/mongoClusterOperationResults/1?api-version=2025-09-01", OperationKind.LOCATION),
        (UPPER_443 + "/MONGOCLUSTEROPERATIONRESULTS/1", OperationKind.LOCATION),
        (f"https://management.azure.com{CLUSTER}", OperationKind.RESOURCE),
    ],
)  # fmt: skip
def test_operation_urls_of_the_spec_are_followed_by_kind(url, kind):
    """The spec's two operation types and the cluster's own URL are accepted, each with its kind."""
    assert check_operation_url(url, endpoint="https://management.azure.com", cluster_id=CLUSTER) is kind


@pytest.mark.parametrize(
    "url",
    [
        f"{OPS.replace('management.azure.com', 'management.azure.com.evil.net')}/mongoClusterOperationResults/1",
        f"{OPS.replace('https://', 'https://user:pw@')}/mongoClusterOperationResults/1",
        f"{OPS.replace(SUB, '33333333-3333-3333-3333-333333333333')}/mongoClusterAzureAsyncOperation/1",
        f"{OPS}/operationsStatus/1",
        f"{OPS}/mongoClusterOperationsStatus/1",  # a mongoCluster* type the spec does not name
        f"{OPS}/mongoClusterOperationResults/1/../../../../../../resourceGroups/x",
        "https://management.azure.com:99999/x",
        f"https://management.azure.com{CLUSTER}/databases/x",
    ],
)
def test_operation_urls_outside_the_checks_are_refused_for_good(url):
    """Lookalike hosts, credentials, another subscription, other paths: refused, and never retried."""
    with pytest.raises(OperationUrlRefused) as info:
        check_operation_url(url, endpoint="https://management.azure.com", cluster_id=CLUSTER)
    assert info.value.transient is False


@pytest.mark.parametrize(
    ("url", "followed"),
    [
        (f"{OPS}/mongoClusterAzureAsyncOperation/1?api-version=2025-09-01", True),
        (f"{OPS.replace('westeurope', 'West%20Europe')}/mongoClusterOperationResults/a1*b2/", True),
        (f"https://management.azure.com{CLUSTER}", True),
        (f"{OPS}/mongoClusterOperationResults/%2e%2e", False),
        (f"{OPS}/mongoClusterOperationResults/1%2F..%2F..", False),
        (OPS.replace("westeurope", "west'europe") + "/mongoClusterOperationResults/1", False),
        (f"{OPS}/mongoClusterOperationResults/a%3Bb", False),
        (f"{OPS}/mongoClusterOperationResults/{'1' * 129}", False),
        (
            f"{OPS.replace(SUB, '33333333-3333-3333-3333-333333333333')}/mongoClusterAzureAsyncOperation/1",
            False,
        ),
        (f"{OPS}/operationsStatus/1", False),
        ("https://management.azure.com:8443/x", False),
    ],
)
def test_the_writer_and_a_check_job_judge_an_operation_url_alike(url, followed):
    """A URL a write's answer may hand over is exactly one a check job may carry: one grammar for both."""
    from rotation.url_guard import UnsafeUrl, check_operation_path, check_same_origin

    try:
        check_operation_url(url, endpoint="https://management.azure.com", cluster_id=CLUSTER)
        writer_follows = True
    except OperationUrlRefused:
        writer_follows = False
    try:
        check_operation_path(check_same_origin(url, "https://management.azure.com"), CLUSTER)
        job_may_carry = True
    except UnsafeUrl:
        job_may_carry = False
    assert (writer_follows, job_may_carry) == (followed, followed)


def test_collateral_diff_names_paths_never_values():
    """Changed tags, identities and properties are named by path; status fields and the key URL are not."""
    before = {
        "tags": {"owner": "secret-owner", "cost centre": "1"},
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {UAMI: {"principalId": "p"}}},
        "systemData": {"lastModifiedAt": "1"},
        "properties": {
            "provisioningState": "Succeeded",
            "clusterStatus": "Ready",
            "compute": {"tier": "M30"},
            "encryption": {"customerManagedKeyEncryption": {"keyEncryptionKeyUrl": "k1"}},
        },
    }
    after = {
        "tags": {"cost centre": "1"},
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {UAMI.lower(): {"principalId": "p"}}},
        "systemData": {"lastModifiedAt": "2"},
        "properties": {
            "provisioningState": "Updating",
            "clusterStatus": "Updating",
            "compute": {"tier": "M40"},
            "encryption": {"customerManagedKeyEncryption": {"keyEncryptionKeyUrl": "k2"}},
        },
    }
    paths = changed_paths(before, after)
    assert paths == ["properties.compute.tier", "tags.owner"]
    assert "secret-owner" not in repr(paths)
    assert changed_paths(before, before) == []
    assert changed_paths({"tags": {}}, {}) == []


class _DoneAtOnce(FakeClusters):
    """ARM answers the write with no operation header and a terminal provisioningState in the body."""

    def __init__(self, state: str) -> None:
        super().__init__()
        self.state = state

    def _accept(self, cluster_id, body):
        accepted = super()._accept(cluster_id, body)
        url = f"https://management.azure.com{cluster_id}"
        if self.state == "Succeeded":
            self.clusters[cluster_id.normalized] = replace(
                self.clusters[cluster_id.normalized],
                key_url=body["properties"]["encryption"]["customerManagedKeyEncryption"][
                    "keyEncryptionKeyUrl"
                ],
            )
        return replace(accepted, url=url, kind=OperationKind.RESOURCE, status=self.state, status_code=200)


@pytest.mark.parametrize(("state", "outcome"), [("Succeeded", Outcome.ROTATED), ("Failed", Outcome.FAILED)])
async def test_a_write_answered_with_a_terminal_state_is_not_polled(state, outcome):
    """200 with no header and a terminal provisioningState: verified at once (or failed), no poll (ARMPolling)."""
    arm = _DoneAtOnce(state)
    cid = arm.add(cluster(key=key_url(1)))
    rotator = Rotator(
        clusters=arm,
        keys=FakeKeys(key_version(1), key_version(2)),
        settings=Settings(),
        sleep=_no_sleep,
        now=lambda: datetime(2026, 11, 28, tzinfo=UTC),
    )
    result = await rotator.rotate(RotationRequest(cluster_id=cid, target=key_url(2)))
    assert result.outcome is outcome, result.reason
    assert arm.polls == 0
    if outcome is Outcome.FAILED:
        assert "provisioningState Failed" in result.reason


async def _no_sleep(_: float) -> None:
    return None
