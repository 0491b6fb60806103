"""The one test harness: the simulator, Azurite, the Functions app, fakes and the `World` every test builds.

The fixture modules are loaded as plugins by ``tests/conftest.py``; ``simulator`` comes first, as it points
``SSL_CERT_FILE`` at the simulator's CA before anything imports aiohttp. Nothing here imports aiohttp.
"""
