"""Azure Functions blueprints, one per area. Each function parses its binding, calls one sync_core use
case through ``sync_core.bootstrap.services()`` and maps the result; no logic lives here."""
