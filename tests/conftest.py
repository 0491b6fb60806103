"""The test harness, loaded as plugins from `tests/helpers` (the simulator first: it sets up TLS)."""

import pytest

pytest.register_assert_rewrite("tests.helpers")

pytest_plugins = [
    "tests.helpers.simulator",  # first: SSL_CERT_FILE must name its CA before aiohttp is imported
    "tests.helpers.azurite",
    "tests.helpers.raw_arm",
    "tests.helpers.stack",
    "tests.helpers.app",
    "tests.helpers.cli",
    "tests.helpers.fakes",
]
