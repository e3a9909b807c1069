"""The OSS error a handler raises; the HTTP layer turns it into the OSS error XML."""

from __future__ import annotations


class OssServerError(Exception):
    """A failed request: HTTP status, OSS error code, message and extra XML fields.

    `extra` lands in the error body as additional elements (for example `Key`, `BucketName`,
    `OSSAccessKeyId`); `headers` are added to the response (for example
    `x-oss-next-append-position` with PositionNotEqualToLength).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        extra: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        ec: str = "0000-00000000",
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra or {}
        self.headers = headers or {}
        self.ec = ec


def no_such_bucket(bucket: str) -> OssServerError:
    return OssServerError(
        404, "NoSuchBucket", "The specified bucket does not exist.", extra={"BucketName": bucket}
    )


def no_such_key(key: str) -> OssServerError:
    return OssServerError(
        404,
        "NoSuchKey",
        "The specified key does not exist.",
        extra={"Key": key},
        ec="0026-00000001",
    )


def invalid_argument(message: str, name: str = "", value: str = "") -> OssServerError:
    extra = {"ArgumentName": name, "ArgumentValue": value} if name else {}
    return OssServerError(400, "InvalidArgument", message, extra=extra)


def malformed_xml(message: str = "The XML you provided was not well-formed.") -> OssServerError:
    return OssServerError(400, "MalformedXML", message)
