"""The CLI is installable: pyproject's [build-system] builds a package whose console script is `cmk-rotator`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib

from tests.helpers.paths import ROOT


def test_pyproject_declares_the_console_script_and_a_build_backend():
    """`cmk-rotator` runs `rotation.cli.main:main`, the function behind `python -m rotation`."""
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert doc["build-system"]["build-backend"] == "setuptools.build_meta"
    assert doc["project"]["scripts"] == {"cmk-rotator": "rotation.cli.main:main"}
    main = (ROOT / "rotation" / "__main__.py").read_text()
    assert "from rotation.cli.main import main" in main


def test_installed_console_script_is_the_cli(tmp_path):
    """`pip install --no-build-isolation --target` of a copy of the project gives a working `cmk-rotator` with the runtime dependencies declared."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "rotation", src / "rotation", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "requirements.txt"):
        shutil.copy(ROOT / name, src / name)
    target = tmp_path / "target"
    subprocess.run(  # noqa: S603 - fixed argv, offline
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
            "--no-build-isolation", "--no-index", "--target", str(target), str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    script = target / "bin" / "cmk-rotator"
    assert script.is_file()
    [dist] = target.glob("cmk_rotator-*.dist-info")
    assert "cmk-rotator = rotation.cli.main:main" in (dist / "entry_points.txt").read_text()
    requires = (dist / "METADATA").read_text()
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            assert f"Requires-Dist: {line}" in requires
    assert not (target / "azsim").exists()  # the simulator stays in the repository

    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    helped = subprocess.run(  # noqa: S603 - the installed script, away from the repository
        [sys.executable, str(script), "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert helped.returncode == 0, helped.stderr
    assert "serve" in helped.stdout
    assert "replay" in helped.stdout
    refused = subprocess.run(  # noqa: S603
        [sys.executable, str(script), "register", "not-a-cluster-id"],
        cwd=tmp_path,
        env={**env, "AzureWebJobsStorage": "UseDevelopmentStorage=true"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: ")
    assert len(refused.stderr.strip().splitlines()) == 1
    imported = subprocess.run(
        [sys.executable, "-c", "import rotation; print(rotation.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert imported.stdout.strip().startswith(str(target))
