"""The records index: PUT/DELETE /api/orgs/{org}/records/{record_id}, POST /api/orgs/{org}/records:batch,
and GET /api/orgs/{org}/records/{record_id}/backfill (the record backfill's jobs of the record).

Invariants: emails and domains are normalised before they are stored (what matching compares);
a PUT replaces the record (idempotent); a batch reports every item's outcome and one bad item never
stops the others. With the org's ``record_backfill_days`` set, a write that adds addresses or domains to
records queues their search (``use_cases.record_backfill``: one coalesced job per mailbox per call,
nothing when nothing was added); the answer is the same either way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sync_core.api.http import (
    ID_PATTERN,
    ApiError,
    ApiRequest,
    ApiResponse,
    field_error,
    not_found,
    ok,
    read_str,
    read_str_list,
    reject_unknown,
)
from sync_core.domain.addresses import normalize_address, normalize_domain
from sync_core.domain.model import Record

if TYPE_CHECKING:
    from sync_core.bootstrap import Services

BATCH_LIMIT = 1000
RECORD_FIELDS = {"type", "name", "emails", "domains"}


def put_record(svc: Services, req: ApiRequest) -> ApiResponse:
    org, record_id = req.param("org"), req.param("record_id")
    record = record_from_json(record_id, req.json_body())
    _upsert(svc, org, [record])
    return ok(record_to_json(record))


def _upsert(svc: Services, org: str, records: list[Record]) -> None:
    """Queue the backfill of what the records add (compared with the stored ones), then write them: a
    failed write retried by the CRM finds the same terms (see ``record_backfill.request_for_records``)."""
    from sync_core.use_cases import record_backfill  # noqa: PLC0415  (loaded only for writes)

    deps = svc.backfill_request_deps()
    before = record_backfill.records_before(deps, org, records)
    record_backfill.request_for_records(deps, org, before, records)
    svc.stores.records.upsert(org, records)


def get_record_backfill(svc: Services, req: ApiRequest) -> ApiResponse:
    """The record's latest backfill job in each mailbox: state and counts (ids and counts only)."""
    from sync_core.use_cases import record_backfill  # noqa: PLC0415

    org, record_id = req.param("org"), req.param("record_id")
    jobs = svc.backfill_jobs.jobs_of_record(org, record_id)
    if not jobs and svc.stores.records.get(org, record_id) is None:
        raise not_found("record")
    shown = []
    for mailbox_id, job_id in sorted(jobs.items()):
        found = svc.backfill_jobs.get(org, mailbox_id, job_id)
        if found is not None:
            job = found.value
            shown.append({**record_backfill.job_to_json(job), "logged": job.per_record.get(record_id, 0)})
    days = svc.stores.settings.get(org).record_backfill_days
    return ok({"record_id": record_id, "record_backfill_days": days, "jobs": shown})


def get_record(svc: Services, req: ApiRequest) -> ApiResponse:
    record = svc.stores.records.get(req.param("org"), req.param("record_id"))
    if record is None:
        raise not_found("record")
    return ok(record_to_json(record))


def delete_record(svc: Services, req: ApiRequest) -> ApiResponse:
    """204 when the record was indexed, 404 otherwise (like every route naming an unknown id);
    ``records:batch`` deletes stay idempotent."""
    org, record_id = req.param("org"), req.param("record_id")
    if svc.stores.records.get(org, record_id) is None:
        raise not_found("record")
    svc.stores.records.delete(org, [record_id])
    return ApiResponse(204)


def batch_records(svc: Services, req: ApiRequest) -> ApiResponse:
    """``{"upsert": [{id, type, name, emails, domains}], "delete": [id]}`` → per-item results."""
    org = req.param("org")
    body = req.json_body(max_bytes=8 * 1024 * 1024)
    reject_unknown(body, {"upsert", "delete"})
    upserts, deletes = body.get("upsert") or [], body.get("delete") or []
    if not isinstance(upserts, list) or not isinstance(deletes, list):
        raise ApiError(400, "invalid_field", "'upsert' and 'delete' must be lists")
    if len(upserts) + len(deletes) > BATCH_LIMIT:
        raise ApiError(413, "batch_too_large", f"at most {BATCH_LIMIT} items per batch", {"limit": BATCH_LIMIT})
    results: list[dict[str, Any]] = []
    records: list[Record] = []
    for index, item in enumerate(upserts):
        try:
            if not isinstance(item, dict):
                raise field_error("upsert", "items must be objects")
            record_id = str(item.get("id", ""))
            if not ID_PATTERN.match(record_id):
                raise field_error("id", "must be 1-128 letters, digits or . _ : @ -")
            records.append(record_from_json(record_id, {k: v for k, v in item.items() if k != "id"}))
            results.append({"index": index, "id": record_id, "op": "upsert", "status": "ok"})
        except ApiError as exc:
            results.append({"index": index, "op": "upsert", "status": "error", "error": exc.body()["error"]})
    delete_ids = []
    for index, record_id in enumerate(deletes):
        if isinstance(record_id, str) and ID_PATTERN.match(record_id):
            delete_ids.append(record_id)
            results.append({"index": index, "id": record_id, "op": "delete", "status": "ok"})
        else:
            error = field_error("delete", "items must be record ids").body()["error"]
            results.append({"index": index, "op": "delete", "status": "error", "error": error})
    if records:
        _upsert(svc, org, records)
    if delete_ids:
        svc.stores.records.delete(org, delete_ids)
    failed = sum(1 for r in results if r["status"] == "error")
    return ok({"results": results, "succeeded": len(results) - failed, "failed": failed})


def record_from_json(record_id: str, data: dict[str, Any]) -> Record:
    reject_unknown(data, RECORD_FIELDS)
    record_type = read_str(data, "type", required=True, max_len=64)
    emails = []
    for raw in read_str_list(data, "emails", max_items=100) or ():
        address = normalize_address(raw)
        if address is None:
            raise field_error("emails", f"holds an invalid address: {raw!r}")
        emails.append(address)
    domains = []
    for raw in read_str_list(data, "domains", max_items=100, max_len=253) or ():
        domain = normalize_domain(raw)
        if domain is None:
            raise field_error("domains", f"holds an invalid domain: {raw!r}")
        domains.append(domain)
    return Record(
        record_id=record_id,
        record_type=record_type or "",
        name=read_str(data, "name", max_len=512) or "",
        emails=tuple(dict.fromkeys(emails)),
        domains=tuple(dict.fromkeys(domains)),
    )


def record_to_json(record: Record) -> dict[str, Any]:
    return {
        "id": record.record_id,
        "type": record.record_type,
        "name": record.name,
        "emails": list(record.emails),
        "domains": list(record.domains),
    }
