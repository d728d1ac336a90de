"""Azure Functions blueprints, one per area. Each function parses its binding, calls one sync_core use
case through ``sync_core.bootstrap.services()`` and maps the result; no logic lives here.

Cold start: at module level a blueprint imports only ``azure.functions``, ``triggers.http_json`` and
``sync_core.bootstrap`` (cheap: it imports its adapters where it builds them). Each function imports its
``sync_core.api`` / ``sync_core.use_cases`` module in its body, so indexing the app loads no SDK and no
use case; the first invocation of a function pays for what it needs, once per worker
(tests/unit/test_cold_import.py)."""
