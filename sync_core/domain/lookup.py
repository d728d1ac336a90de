"""What the decision needs from the CRM's records: pure, in-memory lookups by address and by domain.

Declared in the domain (the decision depends on it, and the domain imports nothing from the ports);
``ports.RecordsIndex.lookup`` returns one, fetched up front so that deciding does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sync_core.domain.model import RecordRef


class RecordLookup(Protocol):
    """What the decision pipeline needs from the records index: pure, in-memory lookups."""

    def records_for_address(self, address: str) -> Sequence[RecordRef]: ...

    def records_for_domain(self, domain: str) -> Sequence[RecordRef]: ...


@dataclass(frozen=True)
class RecordLookupResult:
    """A ``RecordLookup`` over records fetched up front: what ``RecordsIndex.lookup`` returns.
    Addresses and domains that were not fetched, or have no record, give ``()``."""

    by_address: Mapping[str, tuple[RecordRef, ...]] = field(default_factory=dict)
    by_domain: Mapping[str, tuple[RecordRef, ...]] = field(default_factory=dict)

    def records_for_address(self, address: str) -> Sequence[RecordRef]:
        return self.by_address.get(address, ())

    def records_for_domain(self, domain: str) -> Sequence[RecordRef]:
        return self.by_domain.get(domain, ())
