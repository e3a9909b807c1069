"""The error tree: error documents, HEAD's x-oss-err header, non-XML bodies, errno, transience."""

from __future__ import annotations

import base64
import errno

import pytest
import trio

from ossmount.oss import errors
from ossmount.oss.errors import error_from_response, is_transient


def document(code: str, message: str = "msg", request_id: str = "RID123") -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{message}</Message><RequestId>{request_id}</RequestId>"
        f"<HostId>h</HostId></Error>"
    ).encode()


@pytest.mark.parametrize(
    ("status", "code", "cls", "errno_value"),
    [
        (404, "NoSuchKey", errors.NoSuchKey, errno.ENOENT),
        (404, "NoSuchBucket", errors.NoSuchBucket, errno.ENOENT),
        (404, "NoSuchUpload", errors.NoSuchUpload, errno.ENOENT),
        (403, "AccessDenied", errors.AccessDenied, errno.EACCES),
        (403, "InvalidAccessKeyId", errors.InvalidAccessKeyId, errno.EACCES),
        (403, "SignatureDoesNotMatch", errors.SignatureDoesNotMatch, errno.EACCES),
        (416, "InvalidRange", errors.InvalidRange, errno.EINVAL),
        (412, "PreconditionFailed", errors.PreconditionFailed, errno.ESTALE),
        (409, "FileAlreadyExists", errors.FileAlreadyExists, errno.EEXIST),
        (409, "PositionNotEqualToLength", errors.PositionNotEqualToLength, errno.EINVAL),
        (409, "BucketNotEmpty", errors.BucketNotEmpty, errno.ENOTEMPTY),
        (400, "KeyTooLong", errors.BadRequest, errno.ENAMETOOLONG),
        (400, "SomethingNew", errors.BadRequest, errno.EINVAL),
        (503, "SlowDown", errors.SlowDown, errno.EAGAIN),
        (500, "InternalError", errors.InternalError, errno.EIO),
        (501, "NotImplemented", errors.NotImplementedByServer, errno.ENOSYS),
        (418, "Teapot", errors.OssError, errno.EIO),
    ],
)
def test_error_document_picks_class_and_errno(
    status: int, code: str, cls: type[errors.OssError], errno_value: int
) -> None:
    exc = error_from_response(status, {"x-oss-request-id": "hdr"}, document(code))
    assert type(exc) is cls
    assert (exc.status, exc.code, exc.message, exc.request_id) == (status, code, "msg", "RID123")
    assert exc.errno == errno_value
    assert "RID123" in str(exc) and code in str(exc)


def test_head_error_comes_from_x_oss_err_header() -> None:
    header = base64.b64encode(document("NoSuchBucket", "bucket gone")).decode()
    exc = error_from_response(404, {"x-oss-err": header}, b"", method="HEAD")
    assert isinstance(exc, errors.NoSuchBucket)
    assert exc.message == "bucket gone"


def test_head_404_without_document_is_no_such_key() -> None:
    exc = error_from_response(404, {"x-oss-request-id": "r1"}, b"", method="HEAD")
    assert isinstance(exc, errors.NoSuchKey)
    assert exc.request_id == "r1"
    assert exc.errno == errno.ENOENT


def test_body_that_is_not_xml_says_so() -> None:
    exc = error_from_response(502, {}, b"<html>Bad Gateway</html", method="GET")
    assert isinstance(exc, errors.OssProtocolError)
    assert exc.status == 502
    assert "not an OSS error document" in str(exc)
    assert is_transient(exc)  # a 5xx stays transient whatever its body


def test_retry_after_is_kept() -> None:
    exc = error_from_response(503, {"retry-after": "3"}, document("SlowDown"))
    assert exc.retry_after_s == 3.0


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (errors.OssConnectionError("reset"), True),
        (error_from_response(500, {}, document("InternalError")), True),
        (error_from_response(503, {}, document("ServiceUnavailable")), True),
        (error_from_response(502, {}, document("Whatever")), True),
        (error_from_response(501, {}, document("NotImplemented")), False),
        (error_from_response(429, {}, document("TooManyRequests")), True),
        (error_from_response(503, {}, document("SlowDown")), True),
        (error_from_response(400, {}, document("RequestTimeout")), True),
        (error_from_response(404, {}, document("NoSuchKey")), False),
        (error_from_response(403, {}, document("AccessDenied")), False),
        (errors.IntegrityError("crc"), False),
        (ValueError("bug"), False),
    ],
)
def test_is_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_cancellation_is_never_transient() -> None:
    async def main() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                await trio.sleep(1)
            except trio.Cancelled as cancelled:
                assert not is_transient(cancelled)
                raise

    trio.run(main)


async def test_first_failure_raises_the_failure_not_a_group() -> None:
    async def fails() -> None:
        raise errors.NoSuchKey("gone", code="NoSuchKey", status=404)

    async def waits() -> None:
        await trio.sleep_forever()

    with pytest.raises(errors.NoSuchKey), errors.first_failure():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waits)
            nursery.start_soon(fails)


async def test_first_failure_lets_cancellation_through() -> None:
    with trio.move_on_after(0.01) as scope:
        with errors.first_failure():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
    assert scope.cancelled_caught


def test_group_failures_flattens_and_drops_cancelled() -> None:
    first, second = ValueError("a"), KeyError("b")
    group = BaseExceptionGroup("outer", [first, BaseExceptionGroup("inner", [second])])
    assert errors.group_failures(group) == [first, second]
    assert errors.group_failures(first) == [first]
