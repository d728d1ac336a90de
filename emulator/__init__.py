"""A local, faithful stand-in for Microsoft Graph mail and the Microsoft identity platform.

Run it with ``python -m emulator`` or embed it with :class:`emulator.server.EmulatorServer`; drive it
from tests with :class:`emulator.client.EmulatorClient`. The app under test needs only
``GRAPH_AUTHORITY_HOST={url}``, ``GRAPH_BASE_URL={url}/v1.0`` and ``REQUESTS_CA_BUNDLE={state}/ca-bundle.pem``.
"""
