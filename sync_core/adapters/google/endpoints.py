"""Google's public endpoints: the defaults of the Google settings (``sync_core.settings``). Pointing the
settings elsewhere (the local emulator) is the only difference between production and tests.

Sources: OAuth 2.0 for web server apps (developers.google.com/identity/protocols/oauth2/web-server),
OpenID Connect discovery (accounts.google.com/.well-known/openid-configuration), Gmail API REST
reference (developers.google.com/gmail/api/reference/rest).
"""

DEFAULT_GOOGLE_AUTHORIZE_URL = "https://accounts.google.com/o/oauth2/v2/auth"
DEFAULT_GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"  # noqa: S105 (a URL)
DEFAULT_GMAIL_BASE_URL = "https://gmail.googleapis.com"
DEFAULT_GOOGLE_OPENID_CONFIG_URL = "https://accounts.google.com/.well-known/openid-configuration"
DEFAULT_GOOGLE_USERINFO_URL = "https://openidconnect.googleapis.com/v1/userinfo"
DEFAULT_GOOGLE_REVOKE_URL = "https://oauth2.googleapis.com/revoke"
DEFAULT_GOOGLE_JWKS_URL = "https://www.googleapis.com/oauth2/v3/certs"
GOOGLE_ISSUERS = ("https://accounts.google.com", "accounts.google.com")
