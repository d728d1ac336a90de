"""The batch answer of an entity group transaction as Table storage writes it (the example of
https://learn.microsoft.com/rest/api/storageservices/performing-entity-group-transactions): read without
the SDK, so these cases pin what Azurite (in tests/contract/test_table_transactions.py) may not show."""

from __future__ import annotations

from sync_core.adapters.table_client import _sub_responses

CREATED_WITH_BODY = (
    b"--batchresponse_4c637ba4\r\n"
    b"Content-Type: multipart/mixed; boundary=changesetresponse_ba0c5da2\r\n"
    b"\r\n"
    b"--changesetresponse_ba0c5da2\r\n"
    b"Content-Type: application/http\r\n"
    b"Content-Transfer-Encoding: binary\r\n"
    b"\r\n"
    b"HTTP/1.1 201 Created\r\n"
    b"Content-ID: 1\r\n"
    b"Content-Type: application/json;odata=minimalmetadata\r\n"
    b"Cache-Control: no-cache\r\n"
    b'ETag: W/"0x5B168C7B6E589D2"\r\n'
    b"DataServiceVersion: 3.0;\r\n"
    b"\r\n"
    b'{"odata.etag":"W/\\"0x5B168C7B6E589D3\\"","PartitionKey":"p","RowKey":"1",'
    b'"note":"ETag: not this one\\r\\n\\r\\n--changesetresponse_ba0c5da"}\r\n'
    b"--changesetresponse_ba0c5da2\r\n"
    b"Content-Type: application/http\r\n"
    b"Content-Transfer-Encoding: binary\r\n"
    b"\r\n"
    b"HTTP/1.1 204 No Content\r\n"
    b"Content-ID: 2\r\n"
    b"DataServiceVersion: 1.0;\r\n"
    b"\r\n"
    b"\r\n"
    b"--changesetresponse_ba0c5da2--\r\n"
    b"--batchresponse_4c637ba4--\r\n"
)


def test_each_sub_response_gives_its_status_and_the_etag_of_its_headers_not_its_body() -> None:
    answers = _sub_responses(CREATED_WITH_BODY, "multipart/mixed; boundary=batchresponse_4c637ba4")

    assert [(status, etag) for status, _, etag in answers] == [(201, 'W/"0x5B168C7B6E589D2"'), (204, "")]
    assert answers[0][1].startswith(b"HTTP/1.1 201 Created\r\n")
    assert answers[0][1].endswith(b'--changesetresponse_ba0c5da"}')


def test_a_quoted_boundary_and_bare_line_feeds_are_read_too() -> None:
    body = CREATED_WITH_BODY.replace(b"\r\n", b"\n")

    answers = _sub_responses(body, 'multipart/mixed; boundary="batchresponse_4c637ba4"')

    assert [(status, etag) for status, _, etag in answers] == [(201, 'W/"0x5B168C7B6E589D2"'), (204, "")]


def test_a_refused_changeset_is_one_sub_response_with_its_error() -> None:
    body = (
        b"--batchresponse_1\r\nContent-Type: multipart/mixed; boundary=changesetresponse_2\r\n\r\n"
        b"--changesetresponse_2\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        b"HTTP/1.1 409 Conflict\r\nContent-ID: 2\r\nContent-Type: application/json\r\n\r\n"
        b'{"odata.error":{"code":"EntityAlreadyExists","message":{"lang":"en-US","value":"1:exists"}}}\r\n'
        b"--changesetresponse_2--\r\n--batchresponse_1--\r\n"
    )

    [(status, raw, etag)] = _sub_responses(body, "multipart/mixed; boundary=batchresponse_1")

    assert (status, etag) == (409, "")
    assert raw.endswith(b'"value":"1:exists"}}}')
