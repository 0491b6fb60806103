"""The one test harness: the simulator, Azurite, the Functions app, the CLI, fakes and the `World` tests build.

``tests/conftest.py`` loads the fixture modules as plugins, ``simulator`` first: it points ``SSL_CERT_FILE``
at the simulator's CA before any other module imports aiohttp. This package itself imports nothing.
"""
