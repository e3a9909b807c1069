# The classes are named after OSS's error Codes (NoSuchKey, SlowDown ...), as oss2 names them.
# ruff: noqa: N818
"""The one exception tree of the OSS client, and the one errno table.

Every failure of an OSS call is an :class:`OssError`::

    OssError                  status, code, message, request_id, errno
    ├── OssConnectionError    no answer (status 0): refused, reset, timeout, truncated body
    ├── TlsError              TLS cannot work (status 0): certificate not trusted, or the
    │                              endpoint's scheme does not match the port (never retried)
    ├── OssProtocolError      an answer we cannot understand (a body that is not valid XML ...)
    ├── IntegrityError        CRC-64 of the data differs from the server's x-oss-hash-crc64ecma
    ├── NotModified           304
    ├── BadRequest            400: InvalidArgument, InvalidObjectName, MalformedXML, InvalidPart,
    │                              InvalidPartOrder, EntityTooSmall, EntityTooLarge,
    │                              InvalidDigest, RequestTimeout, ...
    ├── Forbidden             403: AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch,
    │                              RequestTimeTooSkewed
    ├── NotFound              404: NoSuchKey, NoSuchBucket, NoSuchUpload, SymlinkTargetNotExist
    ├── MethodNotAllowed      405
    ├── Conflict              409: FileAlreadyExists, ObjectNotAppendable,
    │                              PositionNotEqualToLength, BucketNotEmpty, BucketAlreadyExists
    ├── PreconditionFailed    412
    ├── InvalidRange          416
    ├── TooManyRequests       429
    └── ServerError           5xx: InternalError, NotImplemented, ServiceUnavailable, SlowDown

The class is chosen by the server's error Code first, then by the HTTP status. ``errno`` is what
a file system reports for the error; the tables :data:`ERRNO_BY_CODE` / :data:`ERRNO_BY_STATUS`
below are the only place that decides it (``fs/operations.py`` raises ``FUSEError(exc.errno)``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno as errno_codes
import logging
import ssl
from collections.abc import Iterator

import trio

from ossmount.oss import xml as oss_xml

log = logging.getLogger(__name__)

# The one errno table: by OSS error Code first, then by HTTP status, else EIO.
ERRNO_BY_CODE: dict[str, int] = {
    "NoSuchKey": errno_codes.ENOENT,
    "NoSuchBucket": errno_codes.ENOENT,
    "NoSuchUpload": errno_codes.ENOENT,
    "SymlinkTargetNotExist": errno_codes.ENOENT,
    "AccessDenied": errno_codes.EACCES,
    "InvalidAccessKeyId": errno_codes.EACCES,
    "SignatureDoesNotMatch": errno_codes.EACCES,
    "RequestTimeTooSkewed": errno_codes.EACCES,
    "SecurityTokenExpired": errno_codes.EACCES,
    "FileAlreadyExists": errno_codes.EEXIST,
    "BucketAlreadyExists": errno_codes.EEXIST,
    "BucketNotEmpty": errno_codes.ENOTEMPTY,
    "ObjectNotAppendable": errno_codes.EINVAL,
    "PositionNotEqualToLength": errno_codes.EINVAL,
    "InvalidArgument": errno_codes.EINVAL,
    "InvalidObjectName": errno_codes.EINVAL,
    "KeyTooLong": errno_codes.ENAMETOOLONG,
    "EntityTooLarge": errno_codes.EFBIG,
    "InvalidTargetType": errno_codes.EINVAL,
    "NotImplemented": errno_codes.ENOSYS,
    "PreconditionFailed": errno_codes.ESTALE,
    "InvalidRange": errno_codes.EINVAL,
    "SlowDown": errno_codes.EAGAIN,
    "RequestTimeout": errno_codes.ETIMEDOUT,
}
ERRNO_BY_STATUS: dict[int, int] = {
    0: errno_codes.EIO,
    304: errno_codes.ESTALE,
    400: errno_codes.EINVAL,
    403: errno_codes.EACCES,
    404: errno_codes.ENOENT,
    405: errno_codes.EPERM,
    409: errno_codes.EEXIST,
    412: errno_codes.ESTALE,
    416: errno_codes.EINVAL,
    429: errno_codes.EAGAIN,
    501: errno_codes.ENOSYS,
}


def errno_for(status: int, code: str) -> int:
    """The errno a file system reports for an error with this status and OSS Code."""
    return ERRNO_BY_CODE.get(code, ERRNO_BY_STATUS.get(status, errno_codes.EIO))


class OssError(Exception):
    """An OSS call failed. ``status`` is 0 when no HTTP answer arrived."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str = "",
        request_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.retry_after_s = retry_after_s
        self.errno = errno_for(status, code)

    def __str__(self) -> str:
        parts = [self.message]
        if self.status:
            parts.append(f"(HTTP {self.status}" + (f" {self.code}" if self.code else "") + ")")
        if self.request_id:
            parts.append(f"[request id {self.request_id}]")
        return " ".join(parts)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status}, code={self.code!r}, "
            f"message={self.message!r}, request_id={self.request_id!r})"
        )


class OssConnectionError(OssError):
    """The request got no HTTP answer: connection refused or reset, timeout, truncated body."""


class TlsError(OssError):
    """TLS cannot work with this endpoint as configured: the server's certificate is not trusted,
    or https was spoken to a plain http port (or the reverse). Retrying cannot help, so it is
    not transient: the message names the remedy."""


# The one remedy for an untrusted certificate, named in every such error.
CA_REMEDY = "pass -o ssl_ca_file=PATH (ossmount cp: --ca-file PATH) or set SSL_CERT_FILE"
# nginx's answer (and the bundled server's) to plain HTTP on its TLS port.
PLAIN_HTTP_ON_TLS_PORT = b"plain HTTP request was sent to HTTPS port"


def connection_error(what: str, exc: BaseException) -> OssError:
    """The error for a request that got no answer because of ``exc`` (an OSError, an httpx
    transport error, ...): :class:`TlsError` when TLS itself failed for a reason that retrying
    cannot fix, else the transient :class:`OssConnectionError`."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            reason = cause.verify_message or cause.reason or "unknown reason"
            return TlsError(f"{what}: certificate verify failed ({reason}): {CA_REMEDY}")
        if isinstance(cause, ssl.SSLError) and cause.reason in _NOT_TLS_REASONS:
            reason = cause.reason.lower().replace("_", " ")
            return TlsError(
                f"{what}: the endpoint does not speak TLS ({reason}): "
                "use an http:// endpoint, or the server's https port"
            )
        cause = cause.__cause__ or cause.__context__
    return OssConnectionError(f"{what}: {exc!r}")


# OpenSSL's reasons for a peer that answered a ClientHello with something that is not TLS.
_NOT_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"})


class OssProtocolError(OssError):
    """The server answered something this client cannot understand (e.g. a body that is not XML)."""


class IntegrityError(OssError):
    """The CRC-64 of the data differs from the server's ``x-oss-hash-crc64ecma``."""


class NotModified(OssError):
    pass


class BadRequest(OssError):
    pass


class InvalidArgument(BadRequest):
    pass


class InvalidObjectName(BadRequest):
    pass


class MalformedXML(BadRequest):
    pass


class InvalidPart(BadRequest):
    pass


class InvalidPartOrder(BadRequest):
    pass


class EntityTooSmall(BadRequest):
    pass


class EntityTooLarge(BadRequest):
    pass


class InvalidDigest(BadRequest):
    pass


class RequestTimeout(BadRequest):
    pass


class Forbidden(OssError):
    pass


class AccessDenied(Forbidden):
    pass


class InvalidAccessKeyId(Forbidden):
    pass


class SignatureDoesNotMatch(Forbidden):
    pass


class RequestTimeTooSkewed(Forbidden):
    pass


class NotFound(OssError):
    pass


class NoSuchKey(NotFound):
    pass


class NoSuchBucket(NotFound):
    pass


class NoSuchUpload(NotFound):
    pass


class SymlinkTargetNotExist(NotFound):
    pass


class MethodNotAllowed(OssError):
    pass


class Conflict(OssError):
    pass


class FileAlreadyExists(Conflict):
    pass


class ObjectNotAppendable(Conflict):
    pass


class PositionNotEqualToLength(Conflict):
    pass


class BucketNotEmpty(Conflict):
    pass


class BucketAlreadyExists(Conflict):
    pass


class PreconditionFailed(OssError):
    pass


class InvalidRange(OssError):
    pass


class TooManyRequests(OssError):
    pass


class ServerError(OssError):
    pass


class InternalError(ServerError):
    pass


class NotImplementedByServer(ServerError):
    """OSS Code ``NotImplemented`` (HTTP 501)."""


class ServiceUnavailable(ServerError):
    pass


class SlowDown(ServerError):
    pass


_CLASS_BY_CODE: dict[str, type[OssError]] = {
    "InvalidArgument": InvalidArgument,
    "InvalidObjectName": InvalidObjectName,
    "MalformedXML": MalformedXML,
    "InvalidPart": InvalidPart,
    "InvalidPartOrder": InvalidPartOrder,
    "EntityTooSmall": EntityTooSmall,
    "EntityTooLarge": EntityTooLarge,
    "InvalidDigest": InvalidDigest,
    "RequestTimeout": RequestTimeout,
    "AccessDenied": AccessDenied,
    "InvalidAccessKeyId": InvalidAccessKeyId,
    "SignatureDoesNotMatch": SignatureDoesNotMatch,
    "RequestTimeTooSkewed": RequestTimeTooSkewed,
    "NoSuchKey": NoSuchKey,
    "NoSuchBucket": NoSuchBucket,
    "NoSuchUpload": NoSuchUpload,
    "SymlinkTargetNotExist": SymlinkTargetNotExist,
    "FileAlreadyExists": FileAlreadyExists,
    "ObjectNotAppendable": ObjectNotAppendable,
    "PositionNotEqualToLength": PositionNotEqualToLength,
    "BucketNotEmpty": BucketNotEmpty,
    "BucketAlreadyExists": BucketAlreadyExists,
    "PreconditionFailed": PreconditionFailed,
    "InvalidRange": InvalidRange,
    "InternalError": InternalError,
    "NotImplemented": NotImplementedByServer,
    "ServiceUnavailable": ServiceUnavailable,
    "SlowDown": SlowDown,
}
_CLASS_BY_STATUS: dict[int, type[OssError]] = {
    304: NotModified,
    400: BadRequest,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    412: PreconditionFailed,
    416: InvalidRange,
    429: TooManyRequests,
}


def error_class(status: int, code: str) -> type[OssError]:
    """The exception class for an HTTP error answer with this status and OSS Code."""
    by_code = _CLASS_BY_CODE.get(code)
    if by_code is not None:
        return by_code
    by_status = _CLASS_BY_STATUS.get(status)
    if by_status is not None:
        return by_status
    return ServerError if status >= 500 else OssError


def _parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None  # an HTTP-date; OSS sends seconds, so ignore the rare other form
    return max(0.0, seconds)


def error_from_response(
    status: int,
    headers: dict[str, str],
    body: bytes,
    *,
    method: str = "",
) -> OssError:
    """Build the exception for an HTTP error answer.

    ``headers`` must have lower-case names. The error document is the body, or for HEAD (which has
    no body) the base64 ``x-oss-err`` header. A body that is present but is not an OSS error
    document gives :class:`OssProtocolError`, keeping the status for :func:`is_transient`.
    """
    request_id = headers.get("x-oss-request-id")
    retry_after_s = _parse_retry_after(headers.get("retry-after"))
    if status == 400 and PLAIN_HTTP_ON_TLS_PORT in body[:1024]:
        return TlsError(
            "the endpoint's port speaks https, not http: use an https:// endpoint", status=status
        )
    document = body
    if not document and "x-oss-err" in headers:
        try:
            document = base64.b64decode(headers["x-oss-err"], validate=False)
        except (binascii.Error, ValueError):
            document = b""
    if not document.strip():
        # HEAD answers and some proxies carry no document: the status says it all.
        code = "NoSuchKey" if status == 404 and method == "HEAD" else ""
        hint = ""
        if status == 400 and headers.get("content-type", "").startswith("text/"):
            # OSS answers errors in XML; plain text is what web servers answer plain HTTP
            # on their TLS port with (the body that would say so is not sent to a HEAD).
            hint = " (not an OSS answer: does the endpoint's port speak https?)"
        return error_class(status, code)(
            f"HTTP {status} without error document{hint}",
            status=status,
            code=code,
            request_id=request_id,
            retry_after_s=retry_after_s,
        )
    try:
        parsed = oss_xml.parse_error(document)
    except oss_xml.XmlError as exc:
        snippet = document[:80].decode("utf-8", "replace")
        return OssProtocolError(
            f"HTTP {status} with a body that is not an OSS error document ({exc}): {snippet!r}",
            status=status,
            request_id=request_id,
            retry_after_s=retry_after_s,
        )
    code = parsed.get("Code", "")
    message = parsed.get("Message", "") or f"HTTP {status} {code}"
    return error_class(status, code)(
        message,
        status=status,
        code=code,
        request_id=parsed.get("RequestId") or request_id,
        retry_after_s=retry_after_s,
    )


_TRANSIENT_CODES = frozenset({"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"})


def is_transient(exc: BaseException) -> bool:
    """True for failures that the same request may not meet again: the retry policy's one test.

    Transient: no answer at all (connection refused/reset, timeout, truncated body), HTTP 5xx except
    501, 429, and the Codes SlowDown and RequestTimeout. Never transient: a CRC-64 mismatch
    (:class:`IntegrityError`; the transfer layer decides), any other 4xx, and anything that is
    not an OssError (bugs, cancellation).
    """
    if isinstance(exc, trio.Cancelled) or not isinstance(exc, OssError):
        return False
    if isinstance(exc, IntegrityError):
        return False
    if isinstance(exc, OssConnectionError):
        return True
    if exc.code in _TRANSIENT_CODES:
        return True
    return exc.status == 429 or (exc.status >= 500 and exc.status != 501)


def group_failures(exc: BaseException) -> list[BaseException]:
    """The failures inside ``exc``, a (nested) exception group or a single exception, in order,
    without the Cancelled of tasks that a sibling's failure cancelled."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in group_failures(inner)]
    return [] if isinstance(exc, trio.Cancelled) else [exc]


@contextlib.contextmanager
def first_failure() -> Iterator[None]:
    """Around a nursery of OSS calls: the first failure goes up as itself (an OssError keeps
    its errno and its transient-or-not verdict), not as an ExceptionGroup of it and of the
    Cancelled of the tasks it stopped. A group of Cancelled only (we are being cancelled) goes
    up unchanged."""
    try:
        yield
    except BaseExceptionGroup as group:
        failures = group_failures(group)
        if not failures:
            raise
        for other in failures[1:]:
            log.debug("another concurrent request failed too: %r", other)
        raise failures[0] from None
