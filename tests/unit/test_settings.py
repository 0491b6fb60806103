"""Settings.from_env: the claim and defer tunables (rule 8) are settings with documented names."""

from __future__ import annotations

import re

import pytest

from rotation.settings import Settings, SettingsError
from tests.helpers.paths import ROOT

TUNABLES = ("ROTATION_CLAIM_TTL_SECONDS", "ROTATION_DEFER_SECONDS", "ROTATION_MAX_DEFERS")


def test_claim_and_defer_defaults():
    """Unset, a claim lasts 900 s, a deferred job comes back after 15 s, and at most 40 defers are counted."""
    settings = Settings.from_env({})
    assert (settings.claim_ttl_seconds, settings.defer_seconds, settings.max_defers) == (900.0, 15.0, 40)
    assert settings == Settings()


def test_claim_and_defer_from_env():
    """The three names set the claim TTL, the defer delay and the defer count."""
    settings = Settings.from_env(
        {"ROTATION_CLAIM_TTL_SECONDS": "1.5", "ROTATION_DEFER_SECONDS": "0.5", "ROTATION_MAX_DEFERS": "3"}
    )
    assert (settings.claim_ttl_seconds, settings.defer_seconds, settings.max_defers) == (1.5, 0.5, 3)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ROTATION_CLAIM_TTL_SECONDS", "0"),
        ("ROTATION_CLAIM_TTL_SECONDS", "soon"),
        ("ROTATION_DEFER_SECONDS", "-1"),
        ("ROTATION_DEFER_SECONDS", "0"),  # a held cluster's job would come straight back, a hot loop
        ("ROTATION_DEFER_SECONDS", "inf"),
        ("ROTATION_MAX_DEFERS", "-1"),
        ("ROTATION_MAX_DEFERS", "2.5"),
    ],
)
def test_bad_claim_or_defer_value_names_the_setting(name: str, value: str):
    """A claim TTL or defer delay that is not positive or finite, or a defer count that is no count, is refused."""
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_tunables_are_in_the_readme_configuration_table():
    """Each of the three names has a row in the README's configuration table."""
    section = (ROOT / "README.md").read_text().split("## Configuration\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Za-z_]+)`", section, flags=re.MULTILINE))
    assert set(TUNABLES) <= documented


def test_every_setting_the_app_reads_is_in_the_readme_configuration_table():
    """Each ROTATION_ name `Settings.from_env` reads has a row (``A`` / ``_B``: B shares A's prefix)."""
    section = (ROOT / "README.md").read_text().split("## Configuration\n", 1)[1].split("\n## ", 1)[0]
    read = set(re.findall(r'"(ROTATION_[A-Z_]+)"', (ROOT / "rotation" / "settings.py").read_text()))
    documented: set[str] = set()
    for cell in re.findall(r"^\| (`[^|]+`) \|", section, flags=re.MULTILINE):
        first, *more = re.findall(r"`([A-Za-z_]+)`", cell)
        documented.add(first)
        prefixes = [first[:i] for i, c in enumerate(first) if c == "_"]
        documented.update(p + suffix for suffix in more for p in prefixes)
    assert read
    assert read <= documented, sorted(read - documented)
