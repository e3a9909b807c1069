"""Counters of an OSS client's traffic: requests by operation, retries, errors, bytes.

:class:`OssClient` counts every request it sends in one place (``OssClient.counted_call``, around
the retry policy) into a :class:`RequestCounters`; several clients of one mount share one
(:data:`PROCESS_COUNTERS` by default). Plain integers, changed only from the trio thread (the
bulk receive threads hand their pieces to it first), so no lock is needed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class RequestCounters:
    """Requests by OSS operation (first attempts), retries (further attempts), final failures
    by operation and error code, and body bytes sent and received (every attempt's)."""

    requests: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    bytes_in: int = 0
    bytes_out: int = 0

    def attempt(self, operation: str, number: int) -> None:
        """The ``number``-th attempt (1-based) of one ``operation`` request starts."""
        if number == 1:
            self.requests[operation] += 1
        else:
            self.retries[operation] += 1

    def failed(self, operation: str, code: str) -> None:
        self.errors[(operation, code)] += 1


# The counters of every client that is given none: one mount per process, so one set.
PROCESS_COUNTERS = RequestCounters()


def operation_name(
    method: str,
    bucket: str | None,
    key: str | None,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """The OSS API name of a request (``GetObject``, ``ListObjectsV2``, ``UploadPart`` ...)."""
    if bucket is None:
        return "ListBuckets"
    names = set(params or ())
    copy = any(name.lower() == "x-oss-copy-source" for name in headers or ())
    if "symlink" in names:
        return "PutSymlink" if method == "PUT" else "GetSymlink"
    if "objectMeta" in names:
        return "GetObjectMeta"
    if "uploadId" in names:
        return {
            "PUT": "UploadPartCopy" if copy else "UploadPart",
            "POST": "CompleteMultipartUpload",
            "DELETE": "AbortMultipartUpload",
        }.get(method, "ListParts")
    if "uploads" in names:
        return "InitiateMultipartUpload" if method == "POST" else "ListMultipartUploads"
    if "append" in names:
        return "AppendObject"
    if "delete" in names:
        return "DeleteMultipleObjects"
    if "bucketInfo" in names:
        return "GetBucketInfo"
    if not key:
        if method == "GET":
            return "ListObjectsV2" if "list-type" in names else "ListObjects"
        return f"{method}Bucket"
    return {
        "GET": "GetObject",
        "HEAD": "HeadObject",
        "PUT": "CopyObject" if copy else "PutObject",
        "DELETE": "DeleteObject",
    }.get(method, f"{method}Object")
