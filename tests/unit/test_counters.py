"""Request counters of the OSS client (issue 14): one count per request, per retry, per final
failure, and body bytes, through the real client over httpx.MockTransport."""

from __future__ import annotations

import httpx
import pytest

from ossmount.oss.client import OssClient
from ossmount.oss.counters import RequestCounters, operation_name
from ossmount.oss.errors import NotFound
from ossmount.oss.retry import RetryPolicy
from ossmount.oss.signer import Credentials

ERROR_503 = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>slow</Message></Error>"


async def test_requests_retries_errors_and_bytes_are_counted() -> None:
    answers = iter([httpx.Response(503, content=ERROR_503), httpx.Response(200)])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(404, content=b"<Error><Code>NoSuchKey</Code></Error>")
        return next(answers)

    counters = RequestCounters()
    async with OssClient(
        "http://127.0.0.1:9000",
        Credentials("AKID", "secret"),
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(base_delay_s=0.001),
        counters=counters,
    ) as client:
        await client.put_object("b", "k", b"12345")
        with pytest.raises(NotFound):
            await client.get_object("b", "missing")
    assert counters.requests == {"PutObject": 1, "GetObject": 1}
    assert counters.retries == {"PutObject": 1}
    assert counters.errors == {("GetObject", "NoSuchKey"): 1}
    assert counters.bytes_out == 2 * 5  # both attempts sent the body
    assert counters.bytes_in > 0


@pytest.mark.parametrize(
    ("request_parts", "name"),
    [
        (("GET", None, None, {}), "ListBuckets"),
        (("GET", "b", None, {"list-type": "2"}), "ListObjectsV2"),
        (("GET", "b", "k", {}), "GetObject"),
        (("HEAD", "b", "k", {}), "HeadObject"),
        (("HEAD", "b", "k", {"objectMeta": ""}), "GetObjectMeta"),
        (("PUT", "b", "k", {"partNumber": "1", "uploadId": "u"}), "UploadPart"),
        (("POST", "b", "k", {"uploadId": "u"}), "CompleteMultipartUpload"),
        (("POST", "b", "k", {"uploads": ""}), "InitiateMultipartUpload"),
        (("POST", "b", None, {"delete": ""}), "DeleteMultipleObjects"),
        (("PUT", "b", "k", {"symlink": ""}), "PutSymlink"),
        (("DELETE", "b", "k", {}), "DeleteObject"),
    ],
)
def test_operation_names(
    request_parts: tuple[str, str | None, str | None, dict[str, str]], name: str
) -> None:
    assert operation_name(*request_parts) == name


def test_copy_is_told_by_its_header() -> None:
    headers = {"x-oss-copy-source": "/b/src"}
    assert operation_name("PUT", "b", "k", {}, headers) == "CopyObject"
    assert operation_name("PUT", "b", "k", {"partNumber": "2", "uploadId": "u"}, headers) == (
        "UploadPartCopy"
    )
