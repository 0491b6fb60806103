"""local.settings.json.example, the Functions convention for running the app under Core Tools (`func start`)."""

from __future__ import annotations

import fnmatch
import json
import re

from rotation.settings import Settings
from tests.helpers.paths import ROOT

EXAMPLE = ROOT / "local.settings.json.example"
# Settings the Functions host itself reads (Core Tools' local.settings.json), not the app.
HOST_SETTINGS = frozenset({"FUNCTIONS_WORKER_RUNTIME"})


def _readme_settings() -> set[str]:
    """The setting names of the README's "Configuration" table."""
    section = (ROOT / "README.md").read_text().split("## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Za-z_]+)`", section, flags=re.MULTILINE))


def test_example_builds_settings_from_documented_names_only():
    """The example's Values are settings the README documents, and `Settings.from_env` accepts them."""
    doc = json.loads(EXAMPLE.read_text())
    values: dict[str, str] = doc["Values"]
    assert doc["IsEncrypted"] is False
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert all(isinstance(value, str) for value in values.values())  # app settings are strings
    assert set(values) - HOST_SETTINGS <= _readme_settings()
    settings = Settings.from_env(values)
    assert settings.dry_run is True  # the example never writes to a real cluster by accident


def test_example_is_linked_from_the_readme_and_the_real_file_stays_out_of_git():
    """The README links the example; local.settings.json is ignored by git and the deploy, the example is not."""
    assert "(local.settings.json.example)" in (ROOT / "README.md").read_text()
    patterns = [line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    assert any(fnmatch.fnmatch("local.settings.json", p.lstrip("/")) for p in patterns)
    assert not any(fnmatch.fnmatch(EXAMPLE.name, p.lstrip("/")) for p in patterns)
    assert "local.settings.json" in (ROOT / ".funcignore").read_text().splitlines()
