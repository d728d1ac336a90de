"""The Google provider: Gmail API mail source, Google OAuth token sources (Google Workspace and Gmail)."""
