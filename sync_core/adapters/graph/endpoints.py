"""Where Microsoft Graph and the Microsoft identity platform are, unless the settings say otherwise."""

DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
DEFAULT_GRAPH_BASE_URL = "https://graph.microsoft.com/v1.0"
# The resource Graph tokens are issued for; a scope, not a URL the app calls.
GRAPH_RESOURCE = "https://graph.microsoft.com"
