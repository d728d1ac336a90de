"""The CRM-facing HTTP API, independent of Azure Functions.

Handlers take an ``ApiRequest`` and the wired ``Services`` and return an ``ApiResponse`` or raise
``ApiError`` (for what is wrong with the HTTP request itself); use-case errors (``sync_core.errors``)
pass through and get their status from the one table in ``sync_core.api.errors``, applied by the request
runner. ``triggers/`` translates Azure Functions bindings to and from these types. Every error leaves the
API as ``{"error": {"code", "message", "details"}}``.
"""
