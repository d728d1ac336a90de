"""``python -m tools.reindex_records ORG [ORG...]``: move orgs' records index to the packed layout now,
instead of at each org's first records write (see ``sync_core.adapters.table_records``). Reads the app's
settings from the environment (``AzureWebJobsStorage``, ``TABLE_PREFIX``) like the Functions app.
Idempotent: an org already reindexed is reindexed again, harmlessly."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from sync_core import bootstrap
from sync_core.settings import Settings


def main(argv: list[str], env: Mapping[str, str] | None = None) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    records = bootstrap.Services(Settings.from_env(env)).stores.records
    for org_id in argv:
        print(f"{org_id}: {records.reindex(org_id)} records reindexed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
