"""Static tests of the Bicep in infra/: parsed with pycep-parser, no Azure and no Bicep CLI needed."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))

OWNER = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635"
CONTRIBUTOR = "b24988ac-6180-42e9-9acb-fd0ed04f6f69"
USER_ACCESS_ADMINISTRATOR = "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9"
KEY_VAULT_READER = "21090545-7ca7-4776-b22c-e363652d74d2"
STORAGE_BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
STORAGE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"

CLUSTER_ROTATOR_ACTIONS = [
    "Microsoft.DocumentDB/mongoClusters/read",
    "Microsoft.DocumentDB/mongoClusters/write",
    "Microsoft.ManagedIdentity/userAssignedIdentities/read",
    "Microsoft.KeyVault/vaults/read",
    "Microsoft.Authorization/roleAssignments/read",
]
OPERATION_STATUS_ACTIONS = ["Microsoft.DocumentDB/locations/*/read"]
IDENTITY_ASSIGNER_ACTIONS = [
    "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action",
    "Microsoft.ManagedIdentity/userAssignedIdentities/read",
]


@functools.cache
def parse(relative: str) -> dict[str, Any]:
    """Parse one Bicep file under infra/ (cached)."""
    return BicepParser().parse(file_path=INFRA / relative)


def body(declaration: dict[str, Any]) -> dict[str, Any]:
    """The body of a resource or module, looking through a loop or a condition."""
    config = declaration["config"]
    if "loop_type" in config or "condition" in config:
        return config["config"]
    return config


def resources_of_type(relative: str, resource_type: str) -> dict[str, dict[str, Any]]:
    """Bodies of the resources of one type declared in a file, by symbolic name."""
    return {
        name: body(resource)
        for name, resource in parse(relative)["resources"].items()
        if resource["type"].lower() == resource_type.lower()
    }


def resolve(relative: str, value: Any) -> Any:
    """Replace a reference to a variable or a parameter by its value (a parameter by its default)."""
    doc = parse(relative)
    if isinstance(value, str):
        if value in doc["variables"]:
            return doc["variables"][value]["value"]
        if value in doc["parameters"]:
            return doc["parameters"][value]["default"]
    return value


def relative_name(path: Path) -> str:
    """A Bicep file's path under infra/."""
    return path.relative_to(INFRA).as_posix()


def all_role_definitions() -> list[tuple[str, dict[str, Any]]]:
    """Every custom role definition in infra/, with its file."""
    return [
        (relative_name(path), definition)
        for path in BICEP_FILES
        for definition in resources_of_type(
            relative_name(path), "Microsoft.Authorization/roleDefinitions"
        ).values()
    ]


def all_role_assignments() -> list[tuple[str, str, dict[str, Any]]]:
    """Every role assignment in infra/, with its file and symbolic name."""
    return [
        (relative_name(path), name, assignment)
        for path in BICEP_FILES
        for name, assignment in resources_of_type(
            relative_name(path), "Microsoft.Authorization/roleAssignments"
        ).items()
    ]


def role_definition(role_name_fragment: str) -> dict[str, Any]:
    """The custom role whose name contains the fragment, with its file (the test fails if none)."""
    for relative, definition in all_role_definitions():
        if role_name_fragment in definition["properties"]["roleName"]:
            return {"file": relative, **definition}
    pytest.fail(f"no custom role named like {role_name_fragment!r}")


def app_settings() -> dict[str, Any]:
    """The function app's app settings by name."""
    site = resources_of_type("modules/function-app.bicep", "Microsoft.Web/sites")["site"]
    return {setting["name"]: setting["value"] for setting in site["properties"]["siteConfig"]["appSettings"]}


# --- every file -------------------------------------------------------------------------------------


def test_infra_has_the_expected_entry_points():
    """infra/ holds the azd template, the out-of-band access template and the event subscription template."""
    names = {relative_name(path) for path in BICEP_FILES}
    assert {"main.bicep", "access.bicep", "eventgrid-subscription.bicep"} <= names


@pytest.mark.parametrize("path", BICEP_FILES, ids=relative_name)
def test_every_parameter_has_a_description(path: Path):
    """Every parameter of every Bicep file carries an @description."""
    parameters = parse(relative_name(path))["parameters"]
    undocumented = [
        name
        for name, parameter in parameters.items()
        if not any(decorator["type"] == "description" for decorator in parameter["decorators"])
    ]
    assert undocumented == []


@pytest.mark.parametrize("path", BICEP_FILES, ids=relative_name)
def test_no_storage_key_or_connection_string_with_a_key(path: Path):
    """No file lists storage keys or builds a connection string with an account key."""
    text = path.read_text(encoding="utf-8")
    assert "listKeys" not in text
    assert "AccountKey=" not in text


# --- least privilege --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", BICEP_FILES, ids=relative_name)
def test_no_owner_contributor_or_user_access_administrator(path: Path):
    """No file refers to the Owner, Contributor or User Access Administrator role."""
    text = path.read_text(encoding="utf-8").lower()
    for role_id in (OWNER, CONTRIBUTOR, USER_ACCESS_ADMINISTRATOR):
        assert role_id not in text


def test_custom_roles_name_every_action_with_at_most_a_read_wildcard():
    """Every custom role lists explicit actions (a '*' only inside a read action) and no data actions."""
    definitions = all_role_definitions()
    assert len(definitions) == 3
    for relative, definition in definitions:
        for permission in definition["properties"]["permissions"]:
            actions = resolve(relative, permission["actions"])
            assert actions
            assert all("*" not in action or action.endswith("/*/read") for action in actions)
            assert permission["dataActions"] == []


def test_cluster_rotator_role_has_exactly_the_rotation_actions():
    """The role on the clusters' scopes grants exactly the rotation and read-only doctor actions."""
    definition = role_definition("cluster key rotator")
    actions = resolve(definition["file"], definition["properties"]["permissions"][0]["actions"])
    assert actions == CLUSTER_ROTATOR_ACTIONS


def test_operation_status_role_has_exactly_the_polling_actions():
    """The subscription-level role only reads Microsoft.DocumentDB long-running operation status."""
    definition = role_definition("operation status reader")
    actions = resolve(definition["file"], definition["properties"]["permissions"][0]["actions"])
    assert actions == OPERATION_STATUS_ACTIONS


def test_identity_assigner_role_assigns_and_reads_identities_only():
    """The role on the clusters' identities may assign them (the PUT names them) and read them (doctor)."""
    definition = role_definition("identity assigner")
    actions = resolve(definition["file"], definition["properties"]["permissions"][0]["actions"])
    assert actions == IDENTITY_ASSIGNER_ACTIONS


def test_every_custom_role_action_has_its_reason_next_to_it():
    """Each action in a custom role's list is preceded by a comment line saying why it is needed."""
    lines = (INFRA / "access.bicep").read_text(encoding="utf-8").splitlines()
    for action in CLUSTER_ROTATOR_ACTIONS + OPERATION_STATUS_ACTIONS + IDENTITY_ASSIGNER_ACTIONS:
        index = next(i for i, line in enumerate(lines) if line.strip() == f"'{action}'")
        assert lines[index - 1].strip().startswith("//"), action


def test_role_assignment_names_are_guid_of_scope_principal_and_role():
    """Every role assignment is named guid(scope, principal, role), so a redeploy updates it in place."""
    assignments = all_role_assignments()
    assert len(assignments) >= 6
    for relative, name, assignment in assignments:
        function = assignment["name"]["function"]
        assert function["type"] == "guid", (relative, name)
        assert len(function["parameters"]) == 3, (relative, name)


def test_role_assignments_name_a_service_principal():
    """Role assignments set principalType ServicePrincipal (no replication-delay failures on new identities)."""
    for relative, name, assignment in all_role_assignments():
        assert assignment["properties"]["principalType"] == "ServicePrincipal", (relative, name)


def test_app_gets_exactly_the_storage_data_roles_it_needs():
    """Account-wide, the app's identity gets Queue and Table Data Contributor; blob roles are per container."""
    roles = resolve("modules/app-access.bicep", "storageRoles")
    assert {role["id"] for role in roles} == {STORAGE_QUEUE_DATA_CONTRIBUTOR, STORAGE_TABLE_DATA_CONTRIBUTOR}
    assert resolve("modules/app-access.bicep", "blobDataOwnerRoleId") == STORAGE_BLOB_DATA_OWNER
    assignment = resources_of_type("modules/app-access.bicep", "Microsoft.Authorization/roleAssignments")
    assert assignment["storageAssignments"]["scope"] == "storage"
    assert assignment["packageReader"]["scope"] == "deploymentContainer"


def test_vault_role_is_key_vault_reader_on_the_vault():
    """On the vault the app gets Key Vault Reader (metadata and versions, no crypto), scoped to the vault."""
    assert resolve("access.bicep", "keyVaultReaderRoleId") == KEY_VAULT_READER
    assignment = resources_of_type("modules/vault-access.bicep", "Microsoft.Authorization/roleAssignments")
    assert assignment["vaultReader"]["scope"] == "vault"


def test_topic_identity_may_write_only_to_the_dead_letter_container():
    """The system topic's identity gets Blob Data Contributor scoped to the dead-letter container."""
    assert (
        resolve("modules/deadletter-access.bicep", "blobDataContributorRoleId")
        == STORAGE_BLOB_DATA_CONTRIBUTOR
    )
    assignment = resources_of_type(
        "modules/deadletter-access.bicep", "Microsoft.Authorization/roleAssignments"
    )
    assert assignment["deadLetterWriter"]["scope"] == "container"
    container = parse("modules/deadletter-access.bicep")["resources"]["container"]
    assert container["type"] == "Microsoft.Storage/storageAccounts/blobServices/containers"


def test_system_topic_has_a_system_assigned_identity():
    """A created system topic has a system-assigned identity, the one used for dead-lettering."""
    topic = resources_of_type("modules/vault-access.bicep", "Microsoft.EventGrid/systemTopics")["newTopic"]
    assert topic["identity"]["type"] == "SystemAssigned"
    assert topic["properties"]["topicType"] == "Microsoft.KeyVault.vaults"


# --- what azd provisions ----------------------------------------------------------------------------


def test_main_deploys_only_into_the_app_resource_group():
    """Every module of main.bicep targets the app's resource group, so `azd down` deletes nothing else."""
    modules = parse("main.bicep")["modules"]
    assert modules
    for name, module in modules.items():
        assert body(module)["scope"] == "rg", name
    assert set(parse("main.bicep")["resources"]) == {"rg"}


def test_event_subscription_is_not_part_of_the_provisioned_template():
    """Only eventgrid-subscription.bicep (run after the code deploy) declares an event subscription."""
    for path in BICEP_FILES:
        declared = resources_of_type(
            relative_name(path), "Microsoft.EventGrid/systemTopics/eventSubscriptions"
        )
        assert bool(declared) == (relative_name(path) == "eventgrid-subscription.bicep")


def test_dry_run_is_a_parameter_passed_to_the_app():
    """main.bicep has a dryRun parameter that reaches the ROTATION_DRY_RUN app setting."""
    parameter = parse("main.bicep")["parameters"]["dryRun"]
    assert parameter["type"] == "bool"
    function_app = body(parse("main.bicep")["modules"]["functionApp"])
    assert function_app["params"]["dryRun"] == "dryRun"
    assert "ROTATION_DRY_RUN" in app_settings()


def test_function_app_is_https_only_with_tls12_and_no_ftp():
    """The Function App is HTTPS only, TLS 1.2 or newer, FTP(S) disabled and basic-auth publishing off."""
    site = resources_of_type("modules/function-app.bicep", "Microsoft.Web/sites")["site"]
    properties = site["properties"]
    assert properties["httpsOnly"] is True
    assert properties["siteConfig"]["minTlsVersion"] in {"1.2", "1.3"}
    assert properties["siteConfig"]["scmMinTlsVersion"] in {"1.2", "1.3"}
    assert properties["siteConfig"]["ftpsState"] == "Disabled"
    policies = resources_of_type(
        "modules/function-app.bicep", "Microsoft.Web/sites/basicPublishingCredentialsPolicies"
    )
    assert {policy["name"]: policy["properties"]["allow"] for policy in policies.values()} == {
        "ftp": False,
        "scm": False,
    }


def test_function_app_runs_python_311_on_flex_consumption_with_a_user_assigned_identity():
    """The plan is FC1/FlexConsumption; the app runs Python 3.11 and deploys from blob with its identity."""
    plan = resources_of_type("modules/function-app.bicep", "Microsoft.Web/serverfarms")["plan"]
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    site = resources_of_type("modules/function-app.bicep", "Microsoft.Web/sites")["site"]
    assert site["identity"]["type"] == "UserAssigned"
    config = site["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    assert config["deployment"]["storage"]["type"] == "blobContainer"
    assert config["deployment"]["storage"]["authentication"]["type"] == "UserAssignedIdentity"


def test_app_settings_use_identity_based_storage_and_the_rotation_settings():
    """The app settings reach storage with the managed identity and carry every ROTATION_* setting."""
    settings = app_settings()
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert {
        "AzureWebJobsStorage__accountName",
        "AzureWebJobsStorage__clientId",
        "AzureWebJobsStorage__blobServiceUri",
        "AzureWebJobsStorage__queueServiceUri",
        "AzureWebJobsStorage__tableServiceUri",
        "APPLICATIONINSIGHTS_CONNECTION_STRING",
        "AZURE_CLIENT_ID",
        "ROTATION_ARM_ENDPOINT",
        "ROTATION_ARM_API_VERSION",
        "ROTATION_ALLOWED_VAULT_SUFFIXES",
        "ROTATION_DRY_RUN",
        "ROTATION_MAX_CONCURRENCY",
        "ROTATION_RECONCILE_SCHEDULE",
    } <= set(settings)
    assert "AzureWebJobsStorage" not in settings
    assert "FUNCTIONS_WORKER_RUNTIME" not in settings


def test_rotation_defaults_match_the_app_defaults():
    """main.bicep's defaults for the ROTATION_* settings are the app's documented defaults."""
    parameters = parse("main.bicep")["parameters"]
    assert parameters["armApiVersion"]["default"] == "2025-07-01-preview"
    assert parameters["dryRun"]["default"] is False
    assert parameters["maxConcurrency"]["default"] == 512  # host.json: batchSize 32 + newBatchThreshold 480
    assert parameters["reconcileSchedule"]["default"] == "0 */15 * * * *"


def test_storage_account_refuses_shared_keys_and_public_blobs():
    """The storage account has shared-key access and public blob access off, HTTPS only, TLS 1.2."""
    account = resources_of_type("modules/storage.bicep", "Microsoft.Storage/storageAccounts")["account"]
    properties = account["properties"]
    assert properties["allowSharedKeyAccess"] is False
    assert properties["allowBlobPublicAccess"] is False
    assert properties["supportsHttpsTrafficOnly"] is True
    assert properties["minimumTlsVersion"] == "TLS1_2"


def test_storage_holds_the_app_tables_queues_and_containers():
    """The registry and history tables, the job and poison queues and both containers exist."""
    assert resolve("modules/storage.bicep", "tableNames") == ["watchedclusters", "rotationhistory"]
    assert resolve("modules/storage.bicep", "queueNames") == ["rotation-jobs", "rotation-jobs-poison"]
    assert resolve("main.bicep", "deploymentContainerName") == "app-package"
    assert resolve("main.bicep", "deadLetterContainerName") == "eventgrid-deadletter"
    containers = resources_of_type(
        "modules/storage.bicep", "Microsoft.Storage/storageAccounts/blobServices/containers"
    )
    assert all(container["properties"]["publicAccess"] == "None" for container in containers.values())


# --- the event subscription -------------------------------------------------------------------------


def event_subscription() -> dict[str, Any]:
    """The properties of the Event Grid subscription."""
    resources = resources_of_type(
        "eventgrid-subscription.bicep", "Microsoft.EventGrid/systemTopics/eventSubscriptions"
    )
    return resources["eventSubscription"]["properties"]


def test_event_subscription_includes_exactly_the_three_key_events():
    """The subscription delivers KeyNewVersionCreated, KeyNearExpiry and KeyExpired, nothing else."""
    event_types = resolve(
        "eventgrid-subscription.bicep", event_subscription()["filter"]["includedEventTypes"]
    )
    assert event_types == [
        "Microsoft.KeyVault.KeyNewVersionCreated",
        "Microsoft.KeyVault.KeyNearExpiry",
        "Microsoft.KeyVault.KeyExpired",
    ]


def test_event_subscription_delivers_to_on_key_event_in_event_grid_schema():
    """Events go to the on_key_event function (AzureFunction destination), one per batch, Event Grid schema."""
    properties = event_subscription()
    assert properties["eventDeliverySchema"] == "EventGridSchema"
    destination = properties["destination"]
    assert destination["endpointType"] == "AzureFunction"
    assert destination["properties"]["resourceId"] == "${functionAppResourceId}/functions/on_key_event"
    assert destination["properties"]["maxEventsPerBatch"] == 1


def test_event_subscription_filters_key_names_on_the_subject():
    """Optional key names become a StringIn filter on the event subject."""
    filters = parse("eventgrid-subscription.bicep")["variables"]["keyNameFilters"]["value"]
    text = str(filters)
    assert "StringIn" in text
    assert "'subject'" in text
    assert parse("eventgrid-subscription.bicep")["parameters"]["keyNames"]["default"] == []


def test_event_subscription_has_a_bounded_retry_policy():
    """The retry policy is set explicitly: at most 30 attempts within at most 24 hours."""
    retry = event_subscription()["retryPolicy"]
    parameters = parse("eventgrid-subscription.bicep")["parameters"]
    attempts = parameters[retry["maxDeliveryAttempts"]]
    ttl = parameters[retry["eventTimeToLiveInMinutes"]]
    assert attempts["default"] == 30
    assert ttl["default"] == 1440
    assert {"type": "max_value", "argument": 30} in attempts["decorators"]
    assert {"type": "max_value", "argument": 1440} in ttl["decorators"]


def test_event_subscription_dead_letters_to_the_container_with_the_topic_identity():
    """Undeliverable events go to the eventgrid-deadletter blob container, written with the topic's identity."""
    properties = event_subscription()
    assert "deadLetterDestination" not in properties
    dead_letter = properties["deadLetterWithResourceIdentity"]
    assert dead_letter["identity"] == {"type": "SystemAssigned"}
    destination = dead_letter["deadLetterDestination"]
    assert destination["endpointType"] == "StorageBlob"
    container = resolve("eventgrid-subscription.bicep", destination["properties"]["blobContainerName"])
    assert container == "eventgrid-deadletter"


# --- alerts -----------------------------------------------------------------------------------------


def test_log_alerts_cover_failed_rotations_unusable_keys_and_poisoned_jobs():
    """Scheduled query alerts watch AppTraces for rotation.cluster_failed, key-not-usable and poison moves."""
    alerts = {alert["key"]: alert for alert in resolve("modules/alerts.bicep", "logAlerts")}
    assert {"cluster-failed", "key-not-usable", "collateral-change", "job-poisoned"} <= set(alerts)
    assert all("AppTraces" in alert["query"] for alert in alerts.values())
    assert '"rotation.cluster_failed"' in alerts["cluster-failed"]["query"]
    assert '"key-not-usable"' in alerts["key-not-usable"]["query"]
    assert "rotation-jobs-poison" in alerts["job-poisoned"]["query"]
    assert '"rotation.collateral_change"' in alerts["collateral-change"]["query"]
    assert "changed_paths" in alerts["collateral-change"]["query"]
    rules = resources_of_type("modules/alerts.bicep", "Microsoft.Insights/scheduledQueryRules")
    assert rules["logAlertRules"]["properties"]["scopes"] == ["workspaceId"]


def test_metric_alert_watches_the_queue_message_count():
    """A metric alert fires when messages stay in the app's queues (poison queue or a stalled worker)."""
    alert = resources_of_type("modules/alerts.bicep", "Microsoft.Insights/metricAlerts")["queueBacklogAlert"]
    criterion = alert["properties"]["criteria"]["allOf"][0]
    assert criterion["metricName"] == "QueueMessageCount"
    assert criterion["metricNamespace"] == "Microsoft.Storage/storageAccounts/queueServices"


def test_alerts_are_created_without_an_action_group():
    """The action group is optional: its parameter defaults to empty and the alerts are still declared."""
    assert parse("main.bicep")["parameters"]["actionGroupId"]["default"] == ""
    assert parse("modules/alerts.bicep")["parameters"]["actionGroupId"]["default"] == ""
    assert "condition" not in parse("main.bicep")["modules"]["alerts"]["config"]


# --- azd wiring -------------------------------------------------------------------------------------


def test_azure_yaml_runs_the_hooks_in_order():
    """azure.yaml deploys the function service and wires the pre/postprovision, postdeploy and postdown hooks."""
    text = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    assert re.search(r"^\s+host: function$", text, re.MULTILINE)
    for hook in ("preprovision", "postprovision", "postdeploy", "postdown"):
        assert re.search(rf"^  {hook}:$", text, re.MULTILINE), hook
        assert (INFRA / "hooks" / f"{hook}.sh").is_file(), hook
        assert f"run: ./infra/hooks/{hook}.sh" in text


@pytest.mark.parametrize("hook", sorted((INFRA / "hooks").glob("*.sh")), ids=lambda path: path.name)
def test_hook_scripts_are_valid_posix_sh(hook: Path):
    """Each hook script parses as POSIX sh (dash -n), with no bash-only syntax."""
    shell = shutil.which("dash") or shutil.which("sh")
    if shell is None:
        pytest.skip("no POSIX shell on this machine")
    result = subprocess.run([shell, "-n", str(hook)], capture_output=True, text=True, check=False)  # noqa: S603
    assert result.returncode == 0, result.stderr
    assert hook.read_text(encoding="utf-8").startswith("#!/bin/sh\n")
