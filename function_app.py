"""The Function App: registers one blueprint per area. Importing it has no side effects beyond
registration and imports no SDK beyond azure.functions; services (and the SDKs they use) are built lazily
on the first invocation (see triggers/__init__.py and sync_core.bootstrap)."""

import azure.functions as func

from triggers import activities, auth, crm, docs, health, mailboxes, push, scheduling, sends

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
for blueprint in (health.bp, docs.bp, crm.bp, auth.bp, mailboxes.bp, activities.bp, scheduling.bp, push.bp, sends.bp):
    app.register_functions(blueprint)
