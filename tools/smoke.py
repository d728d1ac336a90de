"""Smoke-test a running CRM Mailbox Sync: what an operator runs after every deploy.

    python -m tools.smoke --base-url https://<app>.azurewebsites.net --key "$FUNCTION_KEY"
    python -m tools.smoke --base-url http://127.0.0.1:7071          # make run (no keys checked)

Checks, in order, each printed as one ``ok``/``FAIL`` line; the exit status is 1 when any failed:

1. ``health``: ``GET /api/health`` answers 200 with ``status: ok`` (storage reachable with the app's identity).
2. ``openapi``: ``GET /api/openapi.json`` answers the OpenAPI 3.1 document without a key.
3. ``function key``: a CRM route without the key answers 401 (skipped with ``--no-key``, for a local host
   that checks no keys), and with the key it is served.
4. ``settings``: ``PUT`` then ``GET`` the settings of the smoke org (default ``smoke-test``, an org no CRM
   uses; only its return-URL allow-list is set).
5. ``records``: ``PUT``, ``GET`` and ``DELETE`` one record in that org (nothing is left behind).
6. ``connect url``: ``POST …/mailboxes/connect`` answers an authorize URL whose ``redirect_uri`` is this
   app's ``/api/auth/callback`` (so ``PUBLIC_BASE_URL`` and the Entra registration agree) and whose host is
   ``--authority`` (default Microsoft's). Nobody follows it; the pending sign-in expires by itself.

The key is never printed; pass it with ``--key`` or the ``SMOKE_FUNCTION_KEY`` environment variable.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

import requests

RECORD = {"type": "contact", "name": "Smoke test", "emails": ["smoke-test@example.invalid"]}


class SmokeFailure(Exception):
    """A check's answer was not what a healthy deployment gives."""


@dataclass(frozen=True)
class Target:
    base_url: str
    key: str | None
    org: str
    return_url: str
    authority: str
    timeout: float

    def url(self, path: str) -> str:
        return f"{self.base_url.rstrip('/')}/api/{path.lstrip('/')}"

    def call(self, method: str, path: str, *, keyed: bool = True, **kwargs: Any) -> requests.Response:
        headers = {"x-functions-key": self.key} if keyed and self.key else {}
        return requests.request(method, self.url(path), headers=headers, timeout=self.timeout, **kwargs)


def expect(response: requests.Response, status: int) -> requests.Response:
    if response.status_code != status:
        raise SmokeFailure(f"{response.request.method} {urlsplit(response.url).path}: {response.status_code}, "
                           f"expected {status}: {response.text[:200]}")  # fmt: skip
    return response


def check_health(target: Target) -> str:
    body = expect(target.call("GET", "health", keyed=False), 200).json()
    if body.get("status") != "ok":
        raise SmokeFailure(f"health says {body}")
    return f"status {body['status']}, storage {body.get('storage')}, version {body.get('version')}"


def check_openapi(target: Target) -> str:
    document = expect(target.call("GET", "openapi.json", keyed=False), 200).json()
    if not str(document.get("openapi", "")).startswith("3.1."):
        raise SmokeFailure("the document is not OpenAPI 3.1")
    return f"OpenAPI {document['openapi']}, {len(document.get('paths', {}))} paths"


def check_key(target: Target) -> str:
    without = target.call("GET", f"orgs/{target.org}/settings", keyed=False)
    if target.key is None:
        return "skipped (--no-key)"
    if without.status_code != 401:
        raise SmokeFailure(f"a CRM route without the function key answered {without.status_code}, not 401")
    expect(target.call("GET", f"orgs/{target.org}/settings"), 200)
    return "401 without the key, 200 with it"


def check_settings(target: Target) -> str:
    allow = target.return_url.rsplit("/", 1)[0]
    expect(target.call("PUT", f"orgs/{target.org}/settings", json={"return_url_allow_list": [allow]}), 200)
    stored = expect(target.call("GET", f"orgs/{target.org}/settings"), 200).json()
    if stored.get("return_url_allow_list") != [allow]:
        raise SmokeFailure(f"settings did not keep the allow-list: {stored.get('return_url_allow_list')}")
    return f"org {target.org}: written and read back"


def check_records(target: Target) -> str:
    path = f"orgs/{target.org}/records/smoke-test-record"
    written = expect(target.call("PUT", path, json=RECORD), 200).json()
    read = expect(target.call("GET", path), 200).json()
    expect(target.call("DELETE", path), 204)
    if read != written:
        raise SmokeFailure(f"the record read back differs: {read}")
    expect(target.call("GET", path), 404)
    return "written, read back, deleted"


def check_connect_url(target: Target) -> str:
    body = {"user_id": "smoke-test", "return_url": target.return_url}
    answer = expect(target.call("POST", f"orgs/{target.org}/mailboxes/connect", json=body), 200).json()
    authorize = urlsplit(str(answer.get("authorize_url", "")))
    query = {k: v[0] for k, v in parse_qs(authorize.query).items()}
    callback = target.url("auth/callback")
    if query.get("redirect_uri") != callback:
        raise SmokeFailure(
            f"redirect_uri is {query.get('redirect_uri')!r}, expected {callback!r}: check PUBLIC_BASE_URL"
        )
    if f"{authorize.scheme}://{authorize.netloc}" != target.authority.rstrip("/"):
        raise SmokeFailure(f"the sign-in goes to {authorize.netloc}, expected {target.authority}")
    if not query.get("client_id"):
        raise SmokeFailure("the authorize URL has no client_id: check GRAPH_CLIENT_ID")
    return f"sign-in at {authorize.netloc}, client_id {query['client_id']}, redirect_uri {callback}"


CHECKS: tuple[tuple[str, Callable[[Target], str]], ...] = (
    ("health", check_health),
    ("openapi", check_openapi),
    ("function key", check_key),
    ("settings", check_settings),
    ("records", check_records),
    ("connect url", check_connect_url),
)


def run(target: Target, out: TextIO) -> bool:
    """Run every check (a failure does not stop the next one); True when all passed."""
    passed = True
    for name, check in CHECKS:
        try:
            print(f"ok    {name}: {check(target)}", file=out)
        except (SmokeFailure, requests.RequestException, ValueError) as exc:
            passed = False
            print(f"FAIL  {name}: {exc}", file=out)
    return passed


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True, help="the app's URL, e.g. https://<app>.azurewebsites.net")
    parser.add_argument(
        "--key", default=os.environ.get("SMOKE_FUNCTION_KEY"), help="a function key (or SMOKE_FUNCTION_KEY)"
    )
    parser.add_argument("--no-key", action="store_true", help="the host checks no keys (make run)")
    parser.add_argument("--org", default="smoke-test", help="the org the checks write to (default smoke-test)")
    parser.add_argument("--return-url", default="https://crm.example/smoke-test/return")
    parser.add_argument("--authority", default="https://login.microsoftonline.com")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    if not args.key and not args.no_key:
        parser.error("--key (or SMOKE_FUNCTION_KEY) is required; --no-key for a host that checks no keys")
    target = Target(
        args.base_url, None if args.no_key else args.key, args.org, args.return_url, args.authority, args.timeout
    )
    return 0 if run(target, out) else 1


if __name__ == "__main__":
    sys.exit(main())
