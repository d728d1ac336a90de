"""The CRM-facing HTTP API, independent of Azure Functions.

Handlers take an ``ApiRequest`` and the wired ``Services`` and return an ``ApiResponse`` or raise
``ApiError``; ``triggers/`` translates Azure Functions bindings to and from these types. Every error
leaves the API as ``{"error": {"code", "message", "details"}}``.
"""
