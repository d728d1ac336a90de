"""The Google emulator: Google's OAuth 2.0 / OpenID Connect endpoints, service-account domain-wide
delegation, the Gmail API v1 (with batch, quota and faults), Pub/Sub push for ``users.watch`` and a
control API, on its own HTTPS port.

Every Google host (accounts.google.com, oauth2.googleapis.com, gmail.googleapis.com,
www.googleapis.com, openidconnect.googleapis.com) is served from one origin with the real path shapes,
so a client reaches it by changing only the base URLs. The facts it reproduces, with their sources,
are in docs/google-emulator-facts.md.
"""
