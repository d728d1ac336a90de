"""Test doubles of the ports, and ``InMemoryApp``, which wires a whole app on them.

Used by tests, bench and local tooling only: ``.funcignore`` leaves this package out of what is
published, and no deployed module imports it (tests/unit/test_deployed_package.py checks both).

- ``stores``: the storage ports (records, activities, mailboxes, cursors, leases, run reports, settings)
- ``scheduling``: the due index, the mailbox catalog and the work queue
- ``push``: subscriptions, the webhook log and the webhook secret
- ``auth``: token caches, pending OAuth flows and consented tenants
- ``mail``: a scripted mail source and a clock
- ``app``: ``InMemoryApp``, every use case's dependencies on the doubles above
"""
