"""Tests for rotation.ids: ARM resource ids and Key Vault key URLs."""

from __future__ import annotations

import pytest

from rotation.ids import (
    DEFAULT_VAULT_SUFFIXES,
    InvalidKeyUrl,
    InvalidResourceId,
    KeyUrl,
    ResourceId,
    parse_cluster_id,
    parse_identity_id,
    parse_key_url,
    parse_resource_id,
    parse_vault_id,
)

SUB = "22222222-2222-2222-2222-222222222222"
CLUSTER = (
    f"/subscriptions/{SUB}/resourceGroups/rg-data/providers/Microsoft.DocumentDB/mongoClusters/orders-prod"
)
IDENTITY = (
    f"/subscriptions/{SUB}/resourceGroups/rg-data/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/id-docdb-cmk"
)
VAULT = f"/subscriptions/{SUB}/resourceGroups/rg-keys/providers/Microsoft.KeyVault/vaults/contoso-kv"
HSM = f"/subscriptions/{SUB}/resourceGroups/rg-keys/providers/Microsoft.KeyVault/managedHSMs/contoso-hsm"
VERSION = "4f6e2b0c9d8a47f1b3e5c7a9d1f3b5e7"
KEY = f"https://contoso-kv.vault.azure.net/keys/cmk-docdb/{VERSION}"


# --- resource ids ---------------------------------------------------------------------------------


def test_cluster_id_canonical():
    """A canonical mongoClusters id parses into its parts and prints back unchanged."""
    rid = parse_cluster_id(CLUSTER)
    assert rid == ResourceId(SUB, "rg-data", "Microsoft.DocumentDB", "mongoClusters", "orders-prod")
    assert str(rid) == CLUSTER
    assert rid.normalized == CLUSTER.lower()


def test_identity_id_canonical():
    """A canonical user-assigned identity id parses."""
    rid = parse_identity_id(IDENTITY)
    assert rid.namespace == "Microsoft.ManagedIdentity"
    assert rid.resource_type == "userAssignedIdentities"
    assert rid.name == "id-docdb-cmk"
    assert str(rid) == IDENTITY


@pytest.mark.parametrize(
    ("value", "rtype", "name"), [(VAULT, "vaults", "contoso-kv"), (HSM, "managedHSMs", "contoso-hsm")]
)
def test_vault_id_canonical(value: str, rtype: str, name: str):
    """Key Vault vaults and Managed HSM ids both parse as vault ids."""
    rid = parse_vault_id(value)
    assert (rid.resource_type, rid.name) == (rtype, name)
    assert str(rid) == value


def test_generic_resource_id():
    """parse_resource_id without constraints accepts any top-level provider resource."""
    rid = parse_resource_id(
        f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/st1"
    )
    assert (rid.namespace, rid.resource_type, rid.name) == ("Microsoft.Storage", "storageAccounts", "st1")


def test_odd_casing_of_fixed_segments_is_accepted_and_printed_canonically():
    """Fixed segments in any case are accepted; str() prints them in canonical case, parts as given."""
    odd = f"/SUBSCRIPTIONS/{SUB}/resourcegroups/RG-Data/PROVIDERS/microsoft.documentdb/MONGOCLUSTERS/Orders-Prod"
    rid = parse_cluster_id(odd)
    assert rid.resource_group == "RG-Data"
    assert rid.namespace == "microsoft.documentdb"
    assert rid.name == "Orders-Prod"
    assert str(rid) == (
        f"/subscriptions/{SUB}/resourceGroups/RG-Data/providers/microsoft.documentdb/MONGOCLUSTERS/Orders-Prod"
    )


def test_normalized_is_equal_across_casings():
    """Ids differing only in case have the same normalized form."""
    a = parse_cluster_id(CLUSTER)
    b = parse_cluster_id(CLUSTER.upper().replace(SUB.upper(), SUB))
    assert a != b
    assert a.normalized == b.normalized


def test_trailing_slash_and_surrounding_whitespace_are_dropped():
    """One trailing slash and surrounding whitespace are accepted and not kept."""
    assert str(parse_cluster_id(f"  {CLUSTER}/\n")) == CLUSTER


def test_resource_id_is_frozen():
    """ResourceId values cannot be modified."""
    rid = parse_cluster_id(CLUSTER)
    with pytest.raises(AttributeError):
        rid.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "resource id is empty"),
        ("   ", "resource id is empty"),
        (CLUSTER.lstrip("/"), "resource id is not absolute"),
        (CLUSTER + "//", "resource id contains an empty segment ('//')"),
        (CLUSTER.replace("/resourceGroups", "//resourceGroups"), "resource id contains an empty segment"),
        (CLUSTER + "/databases/db1", "not a mongoClusters resource id: extra segments (a child resource?)"),
        (CLUSTER + "/firewallRules/allow-all", "not a mongoClusters resource id: extra segments"),
        (CLUSTER.rsplit("/", 1)[0], "not a mongoClusters resource id: missing segments"),
        (f"/subscriptions/{SUB}", "not a mongoClusters resource id: missing segments"),
        (f"/subscriptions/{SUB}/resourceGroups/rg-data", "missing segments"),
        (CLUSTER.replace("rg-data", ".."), "resource id contains a '.' or '..' segment"),
        (CLUSTER.replace("orders-prod", "../../x/y/z/orders-prod"), "'.' or '..' segment"),
        (CLUSTER.replace("rg-data", "."), "'.' or '..' segment"),
        (CLUSTER.replace("rg-data", "rg%2Fdata"), "resource id contains percent-encoding"),
        (CLUSTER + "%2F..%2Fother", "percent-encoding"),
        (CLUSTER.replace("orders", "ordérs"), "resource id contains non-ASCII characters"),
        (CLUSTER.replace("orders", "orders\u200b"), "non-ASCII"),
        (CLUSTER + "\nINFO forged log line", "resource id contains whitespace or control characters"),
        (CLUSTER.replace("rg-data", "rg data"), "whitespace or control characters"),
        (CLUSTER.replace("rg-data", "rg\x00data"), "whitespace or control characters"),
        (CLUSTER + "?api-version=2025-07-01-preview", "resource id contains a query or fragment"),
        (CLUSTER + "#frag", "query or fragment"),
        (CLUSTER.replace("/", "\\"), "resource id contains a backslash"),
        ("/subscriptions/" + "a" * 1100, "resource id is longer than 1024 characters"),
        (CLUSTER.replace(SUB, "not-a-guid"), "subscription 'not-a-guid' is not a GUID"),
        (CLUSTER.replace(SUB, SUB[:-1] + "g"), "is not a GUID"),
        (CLUSTER.replace("rg-data", "rg-data."), "resource group name 'rg-data.' is invalid"),
        (CLUSTER.replace("rg-data", "r" * 91), "resource group name"),
        (CLUSTER.replace("rg-data", "rg:data"), "resource group name"),
        (
            CLUSTER.replace("resourceGroups", "resourceGroup"),
            "segment 3 is 'resourceGroup', expected 'resourceGroups'",
        ),
        (CLUSTER.replace("subscriptions", "tenants"), "segment 1 is 'tenants', expected 'subscriptions'"),
        (CLUSTER.replace("providers", "provider"), "segment 5 is 'provider'"),
        (
            CLUSTER.replace("Microsoft.DocumentDB", "Microsoft.DocumentDb.Foo"),
            "not a mongoClusters resource id",
        ),
        (
            CLUSTER.replace("Microsoft.DocumentDB", "Microsoft.KeyVault"),
            "not a mongoClusters resource id: expected",
        ),
        (CLUSTER.replace("mongoClusters", "databaseAccounts"), "not a mongoClusters resource id: expected"),
        (CLUSTER.replace("Microsoft.DocumentDB", "DocumentDB"), "provider namespace 'DocumentDB' is invalid"),
        (CLUSTER.replace("orders-prod", "ab"), "mongoClusters name 'ab' is invalid"),
        (CLUSTER.replace("orders-prod", "-orders"), "name '-orders' is invalid"),
        (CLUSTER.replace("orders-prod", "orders-"), "mongoClusters name"),
        (CLUSTER.replace("orders-prod", "orders_prod"), "mongoClusters name"),
        (CLUSTER.replace("orders-prod", "o" * 41), "mongoClusters name"),
    ],
)
def test_cluster_id_rejections(value: str, reason: str):
    """Malformed or foreign cluster ids are rejected with a precise reason."""
    with pytest.raises(InvalidResourceId) as info:
        parse_cluster_id(value)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


def test_wrong_type_message_names_the_expected_shape():
    """A wrong provider names the full expected mongoClusters template."""
    with pytest.raises(InvalidResourceId) as info:
        parse_cluster_id(IDENTITY)
    assert str(info.value) == (
        "not a mongoClusters resource id: expected "
        "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.DocumentDB/mongoClusters/{name}"
    )


def test_cluster_name_rule_is_case_insensitive():
    """Upper-case cluster names pass the lowercase name rule (ARM names are case-insensitive)."""
    assert parse_cluster_id(CLUSTER.replace("orders-prod", "ORDERS-Prod")).name == "ORDERS-Prod"


def test_cluster_name_bounds():
    """Cluster names of exactly 3 and 40 characters are accepted."""
    assert parse_cluster_id(CLUSTER.replace("orders-prod", "abc")).name == "abc"
    assert parse_cluster_id(CLUSTER.replace("orders-prod", "a" * 40)).name == "a" * 40


def test_resource_group_with_allowed_punctuation():
    """Resource group names may contain '_', '(', ')', '-' and '.' (not last)."""
    rid = parse_cluster_id(CLUSTER.replace("rg-data", "rg_(data).v2"))
    assert rid.resource_group == "rg_(data).v2"


def test_resource_id_limit_is_1024():
    """An id of exactly 1024 characters is within the length limit."""
    prefix = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.X/"
    value = prefix + "t" * (1024 - len(prefix) - 5) + "/name"
    assert len(value) == 1024
    assert parse_resource_id(value).name == "name"
    too_long = value + "s"
    with pytest.raises(InvalidResourceId, match="longer than 1024"):
        parse_resource_id(too_long)


@pytest.mark.parametrize("value", [None, 42, b"/subscriptions/x", ["a"]])
def test_non_string_resource_id_is_rejected(value: object):
    """Non-string input raises InvalidResourceId, not TypeError."""
    with pytest.raises(InvalidResourceId, match="is not a string"):
        parse_resource_id(value)  # type: ignore[arg-type]


def test_identity_rejections():
    """Identity ids of another type, or with invalid names, are rejected."""
    with pytest.raises(InvalidResourceId, match="not a userAssignedIdentities resource id"):
        parse_identity_id(CLUSTER)
    with pytest.raises(InvalidResourceId, match=r"userAssignedIdentities name 'id\.x' is invalid"):
        parse_identity_id(IDENTITY.replace("id-docdb-cmk", "id.x"))
    with pytest.raises(InvalidResourceId, match="extra segments"):
        parse_identity_id(IDENTITY + "/federatedIdentityCredentials/fic")


def test_vault_rejections():
    """Vault ids of another type, child resources, or with invalid vault names are rejected."""
    expected = (
        "not a Key Vault resource id: expected "
        "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults|managedHSMs/{name}"
    )
    for value in (VAULT.replace("vaults", "secrets"), CLUSTER):
        with pytest.raises(InvalidResourceId) as info:
            parse_vault_id(value)
        assert str(info.value) == expected
    with pytest.raises(InvalidResourceId, match="extra segments"):
        parse_vault_id(VAULT + "/keys/cmk-docdb")
    with pytest.raises(InvalidResourceId, match="vault name '1kv' is invalid"):
        parse_vault_id(VAULT.replace("contoso-kv", "1kv"))
    with pytest.raises(InvalidResourceId, match="vault name 'contoso--kv' is invalid"):
        parse_vault_id(VAULT.replace("contoso-kv", "contoso--kv"))


def test_namespace_and_type_compared_case_insensitively():
    """Requested namespace and type match regardless of case."""
    rid = parse_resource_id(CLUSTER, namespace="microsoft.documentdb", resource_type="MONGOCLUSTERS")
    assert rid.resource_type == "mongoClusters"


def test_quoted_values_are_truncated_and_escaped():
    """A hostile segment is quoted with repr() and truncated, so it cannot span lines."""
    with pytest.raises(InvalidResourceId) as info:
        parse_cluster_id(CLUSTER.replace(SUB, "x" * 300))
    message = str(info.value)
    assert len(message) < 150
    assert message.startswith("subscription 'xxx")
    assert "...'" in message


# --- key URLs -------------------------------------------------------------------------------------


def test_key_url_versioned():
    """A versioned key URL parses into host, name and version and prints back unchanged."""
    url = parse_key_url(KEY)
    assert url == KeyUrl("contoso-kv.vault.azure.net", "cmk-docdb", VERSION)
    assert str(url) == KEY
    assert url.vault_url == "https://contoso-kv.vault.azure.net"
    assert url.vault_name == "contoso-kv"
    assert not url.versionless


def test_key_url_versionless():
    """A versionless key URL has version None."""
    url = parse_key_url("https://contoso-kv.vault.azure.net/keys/cmk-docdb")
    assert url.version is None
    assert url.versionless
    assert str(url) == "https://contoso-kv.vault.azure.net/keys/cmk-docdb"


@pytest.mark.parametrize(
    "value",
    [
        KEY + "/",
        f"  {KEY}\n",
        KEY.replace("contoso-kv.vault.azure.net", "CONTOSO-KV.Vault.Azure.NET"),
        KEY.replace(VERSION, VERSION.upper()),
        KEY.replace(".net/", ".net:443/"),
        KEY.replace("https", "HTTPS"),
    ],
)
def test_key_url_normalisation(value: str):
    """Trailing slash, whitespace, host and version case, :443 and scheme case normalise to the canonical URL."""
    assert str(parse_key_url(value)) == KEY


def test_key_url_versionless_trailing_slash():
    """The versionless form with a trailing slash (as KeyClient requests it) parses."""
    assert parse_key_url("https://contoso-kv.vault.azure.net/keys/cmk-docdb/").versionless


def test_key_name_case_is_kept():
    """The key name keeps its given case."""
    assert parse_key_url(KEY.replace("cmk-docdb", "CMK-DocDB")).name == "CMK-DocDB"


@pytest.mark.parametrize(
    "host",
    [
        "contoso-kv.vault.azure.cn",
        "contoso-kv.vault.usgovcloudapi.net",
        "contoso-hsm.managedhsm.azure.net",
    ],
)
def test_other_clouds_and_managed_hsm(host: str):
    """Sovereign-cloud vaults and Managed HSM hosts are in the default allowed suffixes."""
    url = parse_key_url(f"https://{host}/keys/cmk/{VERSION}")
    assert url.host == host
    assert url.vault_name == host.split(".", maxsplit=1)[0]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "key URL is empty"),
        ("contoso-kv.vault.azure.net/keys/cmk-docdb", "key URL is not an absolute https URL"),
        (KEY.replace("https", "http"), "key URL scheme 'http' is not https"),
        (KEY.replace("https", "ftp"), "scheme 'ftp' is not https"),
        (KEY.replace("https://", "https://user@"), "key URL must not contain user info"),
        (KEY.replace("https://", "https://user:pw@"), "must not contain user info"),
        (KEY.replace(".net/", ".net:8443/"), "key URL port '8443' is not allowed"),
        (KEY.replace(".net/", ".net:/"), "port '' is not allowed"),
        (KEY.replace(".net/", ".net:0443x/"), "port '0443x' is not allowed"),
        (KEY + "?api-version=7.5", "key URL contains a query or fragment"),
        (KEY + "#x", "query or fragment"),
        (
            KEY.replace("contoso-kv.vault.azure.net", "contoso-kv.vault.azure.net.evil.example"),
            "key URL host 'contoso-kv.vault.azure.net.evil.example' is not in an allowed vault domain",
        ),
        (
            KEY.replace("contoso-kv.vault.azure.net", "vault.azure.net"),
            "host 'vault.azure.net' is not in an allowed",
        ),
        (KEY.replace("contoso-kv.vault.azure.net", "evilvault.azure.net"), "not in an allowed vault domain"),
        (
            KEY.replace("contoso-kv.vault.azure.net", "contoso-kv.vault.azure.com"),
            "not in an allowed vault domain",
        ),
        (KEY.replace("contoso-kv.", "a.contoso-kv."), "has more than one label before '.vault.azure.net'"),
        (KEY.replace("contoso-kv.", "contoso-kv.."), "has an empty label"),
        (KEY.replace("contoso-kv.vault.azure.net", "contoso-kv.vault.azure.net."), "has an empty label"),
        (KEY.replace("contoso-kv", "contoso_kv"), "is not a valid DNS name"),
        (KEY.replace("contoso-kv", "-contoso"), "is not a valid DNS name"),
        (KEY.replace("contoso-kv", "kv"), "vault name 'kv' is invalid"),
        (KEY.replace("contoso-kv", "1contoso"), "vault name '1contoso' is invalid"),
        (KEY.replace("contoso-kv", "contoso--kv"), "vault name 'contoso--kv' is invalid"),
        (KEY.replace("contoso-kv", "c" * 25), "is invalid: 3-24"),
        ("https:///keys/cmk-docdb", "key URL has no host"),
        ("https://contoso-kv.vault.azure.net", "path '' is not /keys/{name} or /keys/{name}/{version}"),
        ("https://contoso-kv.vault.azure.net/", "path '/' is not /keys"),
        ("https://contoso-kv.vault.azure.net/keys", "path '/keys' is not"),
        (KEY.replace("/keys/", "/secrets/"), "path '/secrets/cmk-docdb/4f6e"),
        (KEY.replace("/keys/", "/certificates/"), "is not /keys/{name}"),
        (KEY + "/extra", "is not /keys/{name}"),
        (KEY + "//", "is not /keys/{name}"),
        ("https://contoso-kv.vault.azure.net//keys/cmk-docdb", "is not /keys/{name}"),
        (
            KEY.replace("/keys/cmk-docdb", "/keys/../secrets/cmk-docdb"),
            "key URL path contains a '.' or '..' segment",
        ),
        (KEY.replace("cmk-docdb", "."), "'.' or '..' segment"),
        (KEY.replace("cmk-docdb", "cmk%2F..%2Fx"), "key URL contains percent-encoding"),
        (KEY.replace("cmk-docdb", "cmk_docdb"), "key name 'cmk_docdb' is invalid"),
        (KEY.replace("cmk-docdb", "k" * 128), "key name"),
        (KEY.replace(VERSION, "xyz"), "key URL version 'xyz' is not 32 hex characters"),
        (KEY.replace(VERSION, VERSION[:-1]), "is not 32 hex characters"),
        (KEY.replace(VERSION, VERSION + "0"), "is not 32 hex characters"),
        (KEY.replace(VERSION, VERSION[:-1] + "g"), "is not 32 hex characters"),
        (KEY.replace("cmk", "cmké"), "key URL contains non-ASCII characters"),
        (KEY.replace("contoso", "contosо"), "non-ASCII"),  # Cyrillic o: homograph  # noqa: RUF001
        (KEY + "\r\nX-Forged: 1", "whitespace or control characters"),
        (KEY.replace("cmk-docdb", "cmk docdb"), "whitespace or control characters"),
        (KEY.replace("https://contoso", "https:\\\\contoso"), "backslash"),
        (KEY.replace("cmk-docdb", "k" * 2100), "key URL is longer than 2048 characters"),
        ("https://[::1]/keys/cmk-docdb", "not allowed"),
    ],
)
def test_key_url_rejections(value: str, reason: str):
    """Unsafe or malformed key URLs are rejected with a precise reason."""
    with pytest.raises(InvalidKeyUrl) as info:
        parse_key_url(value)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


def test_key_url_detail_omits_the_subject():
    """InvalidKeyUrl.detail is the reason without the leading 'key URL', for callers naming the field."""
    with pytest.raises(InvalidKeyUrl) as info:
        parse_key_url(KEY.replace(VERSION, "xyz"))
    assert info.value.detail == "version 'xyz' is not 32 hex characters"


def test_require_version():
    """require_version rejects a versionless URL."""
    with pytest.raises(InvalidKeyUrl, match="key URL has no version"):
        parse_key_url("https://contoso-kv.vault.azure.net/keys/cmk-docdb", require_version=True)
    assert parse_key_url(KEY, require_version=True).version == VERSION


def test_custom_allowed_suffixes():
    """allowed_suffixes replaces the defaults; suffixes are matched case-insensitively, leading dot implied."""
    url = f"https://kv-one.vault.contoso.example/keys/cmk/{VERSION}"
    with pytest.raises(InvalidKeyUrl, match="not in an allowed vault domain"):
        parse_key_url(url)
    assert (
        parse_key_url(url, allowed_suffixes=[".Vault.Contoso.Example"]).host == "kv-one.vault.contoso.example"
    )
    assert parse_key_url(url, allowed_suffixes=["vault.contoso.example"]).vault_name == "kv-one"
    with pytest.raises(InvalidKeyUrl, match="not in an allowed vault domain"):
        parse_key_url(KEY, allowed_suffixes=[".vault.azure.cn"])


def test_bare_string_suffix_is_one_suffix():
    """A single suffix passed as a bare string is not taken as a sequence of one-letter suffixes."""
    assert parse_key_url(KEY, allowed_suffixes=".vault.azure.net").host == "contoso-kv.vault.azure.net"
    with pytest.raises(InvalidKeyUrl, match="not in an allowed vault domain"):
        parse_key_url("https://kv-one.t/keys/cmk", allowed_suffixes=".vault.azure.net")


def test_empty_suffix_list_allows_nothing():
    """An empty or blank suffix never matches every host."""
    for suffixes in ([], [""], ["  "], ["."]):
        with pytest.raises(InvalidKeyUrl, match="not in an allowed vault domain"):
            parse_key_url(KEY, allowed_suffixes=suffixes)


def test_default_suffixes():
    """The default suffixes are the public, China, US Government clouds and Managed HSM."""
    assert DEFAULT_VAULT_SUFFIXES == (
        ".vault.azure.net",
        ".vault.azure.cn",
        ".vault.usgovcloudapi.net",
        ".managedhsm.azure.net",
    )


@pytest.mark.parametrize("value", [None, 3, {"url": KEY}])
def test_non_string_key_url_is_rejected(value: object):
    """Non-string input raises InvalidKeyUrl, not TypeError."""
    with pytest.raises(InvalidKeyUrl, match="is not a string"):
        parse_key_url(value)  # type: ignore[arg-type]


def test_same_key_ignores_case_and_version():
    """same_key compares host and key name case-insensitively and ignores versions."""
    a = parse_key_url(KEY)
    b = parse_key_url("https://CONTOSO-KV.vault.azure.net/keys/CMK-DOCDB")
    assert a.same_key(b)
    assert b.same_key(a)
    assert not a.same_key(parse_key_url(KEY.replace("cmk-docdb", "cmk-other")))
    assert not a.same_key(parse_key_url(KEY.replace("contoso-kv", "contoso-kv2")))
    assert not a.same_key(parse_key_url(KEY.replace("vault.azure.net", "vault.azure.cn")))


def test_with_version():
    """with_version returns the same key at a new, validated, lower-cased version."""
    base = parse_key_url("https://contoso-kv.vault.azure.net/keys/cmk-docdb")
    new = base.with_version(VERSION.upper())
    assert new == parse_key_url(KEY)
    assert base.versionless
    assert parse_key_url(KEY).with_version("0" * 32).version == "0" * 32


@pytest.mark.parametrize("version", ["", "xyz", VERSION + "0", VERSION[:-1] + "z", f" {VERSION}"])
def test_with_version_rejects_bad_versions(version: str):
    """with_version rejects anything but 32 hex characters."""
    with pytest.raises(InvalidKeyUrl, match="is not 32 hex characters"):
        parse_key_url(KEY).with_version(version)


def test_key_url_is_frozen_and_hashable():
    """KeyUrl values are immutable and usable as dict keys."""
    url = parse_key_url(KEY)
    assert {url: 1}[parse_key_url(KEY + "/")] == 1
    with pytest.raises(AttributeError):
        url.version = None  # type: ignore[misc]
