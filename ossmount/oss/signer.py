"""OSS request signing: V1 (``OSS AK:signature``) and V4 (``OSS4-HMAC-SHA256``).

The canonical-string functions are pure, so that the client signs with them and the bundled
server verifies with them; ``OssV1Auth`` / ``OssV4Auth`` apply them to httpx requests, and
``presign_v1`` / ``presign_v4`` build presigned URLs. The rules follow Alibaba's SDK (oss2) to
the byte; tests/unit/test_signer_vs_oss2.py holds the known-answer cases.

V1 (HMAC-SHA1, base64)::

    VERB \\n Content-MD5 \\n Content-Type \\n Date-or-Expires \\n
    CanonicalizedOSSHeaders (x-oss-*, lower-case, sorted, "k:v\\n" each)
    CanonicalizedResource  (/bucket/key?subresources, key not encoded, only the
                            sub-resources OSS lists, sorted, "k=v" or "k")

V4 (HMAC-SHA256 hex, with a key derived from secret, date, region and product)::

    canonical request = VERB \\n /bucket/key (encoded, "/" kept) \\n
                        sorted encoded query \\n canonical headers (x-oss-*, content-type,
                        content-md5 and the additional headers) \\n \\n
                        additional header names \\n payload hash (UNSIGNED-PAYLOAD)
    string to sign    = "OSS4-HMAC-SHA256" \\n timestamp \\n scope \\n sha256(canonical request)
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import time
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Final
from urllib.parse import quote, unquote

import httpx

V4_ALGORITHM: Final = "OSS4-HMAC-SHA256"
V4_PRODUCT: Final = "oss"
V4_TERMINATOR: Final = "aliyun_v4_request"
UNSIGNED_PAYLOAD: Final = "UNSIGNED-PAYLOAD"

# The query parameters that V1 signs ("sub-resources"); every other parameter is left out.
V1_SUBRESOURCES: Final = frozenset(
    {
        "acl", "append", "asyncFetch", "bucketInfo", "callback", "callback-var", "cname", "comp",
        "continuation-token", "cors", "delete", "encryption", "endTime", "group", "inventory",
        "inventoryId", "lifecycle", "link", "live", "location", "logging", "metaQuery",
        "objectInfo", "objectMeta", "partNumber", "policy", "position", "qos", "qosInfo",
        "referer", "replication", "replicationLocation", "replicationProgress",
        "requestPayment", "resourceGroup", "response-cache-control",
        "response-content-disposition", "response-content-encoding",
        "response-content-language", "response-content-type", "response-expires", "restore",
        "security-token", "sequential", "startTime", "stat", "status", "style", "styleName",
        "symlink", "tagging", "transferAcceleration", "uploadId", "uploads", "versionId",
        "versioning", "versions", "vod", "website", "worm", "wormExtend", "wormId",
        "x-oss-ac-forward-allow", "x-oss-ac-source-ip", "x-oss-ac-subnet-mask",
        "x-oss-ac-vpc-id", "x-oss-async-process", "x-oss-process", "x-oss-request-payer",
        "x-oss-traffic-limit", "x-oss-write-get-object-response",
    }
)  # fmt: skip

# Headers V4 always signs besides x-oss-*.
V4_DEFAULT_SIGNED_HEADERS: Final = frozenset({"content-type", "content-md5"})

# The query parameters of a presigned URL that carry the signature itself.
V1_PRESIGN_PARAMS: Final = frozenset({"OSSAccessKeyId", "Expires", "Signature"})


@dataclass(frozen=True)
class Credentials:
    """An access key pair, with the STS security token where the key is temporary."""

    access_key_id: str
    access_key_secret: str = field(repr=False)
    security_token: str | None = field(default=None, repr=False)


# --- V1 ----------------------------------------------------------------------------------


def canonical_resource_v1(
    bucket: str | None, key: str | None, params: Mapping[str, str | None]
) -> str:
    """``/bucket/key?sub-resources`` as V1 signs it (``/`` alone for service requests)."""
    resource = f"/{bucket}/{key or ''}" if bucket else "/"
    subresources = sorted((k, v) for k, v in params.items() if k in V1_SUBRESOURCES)
    if subresources:
        resource += "?" + "&".join(f"{k}={v}" if v else k for k, v in subresources)
    return resource


def _lower_items(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def v1_string_to_sign(
    method: str,
    headers: Mapping[str, str],
    canonical_resource: str,
    date_or_expires: str | None = None,
) -> str:
    """The V1 string to sign; ``date_or_expires`` replaces Date (presigned URLs sign Expires)."""
    lower = _lower_items(headers)
    if date_or_expires is None:
        date_or_expires = lower.get("x-oss-date") or lower.get("date", "")
    oss_headers = "".join(
        f"{name}:{value}\n" for name, value in sorted(lower.items()) if name.startswith("x-oss-")
    )
    return "\n".join(
        [
            method.upper(),
            lower.get("content-md5", ""),
            lower.get("content-type", ""),
            date_or_expires,
            oss_headers + canonical_resource,
        ]
    )


def v1_signature(secret: str, string_to_sign: str) -> str:
    digest = hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


# --- V4 ----------------------------------------------------------------------------------


def v4_uri_encode(text: str, keep_slash: bool) -> str:
    """Percent-encode everything but ``A-Za-z0-9_-~.`` (and ``/`` in paths), upper-case hex."""
    return quote(text, safe="/~" if keep_slash else "~")


def v4_canonical_request(
    method: str,
    bucket: str | None,
    key: str | None,
    params: Mapping[str, str | None],
    headers: Mapping[str, str],
    additional_headers: Sequence[str],
) -> str:
    lower = _lower_items(headers)
    additional = sorted({name.lower() for name in additional_headers})
    uri = v4_uri_encode(f"/{bucket}/{key or ''}" if bucket else "/", keep_slash=True)
    encoded_params = sorted(
        (v4_uri_encode(k, keep_slash=False), v4_uri_encode(v or "", keep_slash=False))
        for k, v in params.items()
    )
    query = "&".join(f"{k}={v}" if v else k for k, v in encoded_params)
    signed = {
        name: value
        for name, value in lower.items()
        if name.startswith("x-oss-") or name in V4_DEFAULT_SIGNED_HEADERS or name in additional
    }
    canonical_headers = "".join(f"{name}:{value}\n" for name, value in sorted(signed.items()))
    payload_hash = lower.get("x-oss-content-sha256", UNSIGNED_PAYLOAD)
    return "\n".join(
        [method.upper(), uri, query, canonical_headers, ";".join(additional), payload_hash]
    )


def v4_scope(timestamp: str, region: str) -> str:
    return f"{timestamp[:8]}/{region}/{V4_PRODUCT}/{V4_TERMINATOR}"


def v4_string_to_sign(canonical_request: str, timestamp: str, region: str) -> str:
    digest = hashlib.sha256(canonical_request.encode()).hexdigest()
    return "\n".join([V4_ALGORITHM, timestamp, v4_scope(timestamp, region), digest])


@functools.lru_cache(maxsize=16)
def v4_signing_key(secret: str, date: str, region: str) -> bytes:
    """The day's signing key (four HMACs): the same for every request of a day and region."""
    key = hmac.new(("aliyun_v4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, V4_PRODUCT, V4_TERMINATOR):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def v4_signature(secret: str, timestamp: str, region: str, string_to_sign: str) -> str:
    signing_key = v4_signing_key(secret, timestamp[:8], region)
    return hmac.new(signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class V4Authorization:
    """The parts of an ``OSS4-HMAC-SHA256`` Authorization header (or presigned query)."""

    access_key_id: str
    date: str
    region: str
    product: str
    additional_headers: tuple[str, ...]
    signature: str


def parse_v4_credential(credential: str) -> tuple[str, str, str, str]:
    """Split ``AK/date/region/product/aliyun_v4_request``; raises ValueError."""
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != V4_TERMINATOR or not parts[0]:
        raise ValueError("malformed V4 credential scope")
    return parts[0], parts[1], parts[2], parts[3]


def parse_v4_authorization(value: str) -> V4Authorization:
    """Parse ``OSS4-HMAC-SHA256 Credential=..., AdditionalHeaders=..., Signature=...``."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != V4_ALGORITHM:
        raise ValueError("not an OSS4-HMAC-SHA256 authorization")
    fields: dict[str, str] = {}
    for item in rest.split(","):
        name, sep, field_value = item.strip().partition("=")
        if not sep:
            raise ValueError(f"malformed authorization field {name!r}")
        fields[name] = field_value
    try:
        access_key_id, date, region, product = parse_v4_credential(fields["Credential"])
        signature = fields["Signature"]
    except KeyError as exc:
        raise ValueError(f"authorization lacks {exc.args[0]}") from None
    additional = fields.get("AdditionalHeaders", "")
    return V4Authorization(
        access_key_id=access_key_id,
        date=date,
        region=region,
        product=product,
        additional_headers=tuple(name for name in additional.split(";") if name),
        signature=signature,
    )


# --- httpx ---------------------------------------------------------------------------------

# The client tells the signer which bucket and key a request is for (they cannot be recovered
# from a virtual-host URL without knowing the endpoint), as request extensions.
BUCKET_EXTENSION: Final = "oss_bucket"
KEY_EXTENSION: Final = "oss_key"


def request_query_params(url: httpx.URL) -> dict[str, str | None]:
    """The decoded query of ``url``; a parameter without a value maps to None."""
    params: dict[str, str | None] = {}
    raw_query = url.query.decode("ascii")
    for item in raw_query.split("&") if raw_query else ():
        name, sep, value = item.partition("=")
        params[unquote(name)] = unquote(value) if sep and value else None
    return params


def _request_target(request: httpx.Request) -> tuple[str | None, str | None]:
    bucket = request.extensions.get(BUCKET_EXTENSION)
    key = request.extensions.get(KEY_EXTENSION)
    return bucket, key


def http_date(epoch_s: float | None = None) -> str:
    return formatdate(epoch_s, usegmt=True)


def v4_timestamp(epoch_s: float | None = None) -> str:
    return _v4_timestamp_of_second(int(time.time() if epoch_s is None else epoch_s))


@functools.lru_cache(maxsize=4)
def _v4_timestamp_of_second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y%m%dT%H%M%SZ")


class OssV1Auth(httpx.Auth):
    """Signs each request with V1 (``Authorization: OSS AK:signature``) and a fresh Date."""

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        credentials = self._credentials
        if credentials.security_token:
            request.headers["x-oss-security-token"] = credentials.security_token
        request.headers["Date"] = http_date()
        bucket, key = _request_target(request)
        resource = canonical_resource_v1(bucket, key, request_query_params(request.url))
        string_to_sign = v1_string_to_sign(request.method, request.headers, resource)
        signature = v1_signature(credentials.access_key_secret, string_to_sign)
        request.headers["Authorization"] = f"OSS {credentials.access_key_id}:{signature}"
        yield request


class OssV4Auth(httpx.Auth):
    """Signs each request with V4 (``OSS4-HMAC-SHA256``) for ``region``."""

    def __init__(
        self,
        credentials: Credentials,
        region: str,
        additional_headers: Iterable[str] = (),
    ) -> None:
        self._credentials = credentials
        self._region = region
        self._additional_headers = tuple(sorted(name.lower() for name in additional_headers))

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        credentials = self._credentials
        if credentials.security_token:
            request.headers["x-oss-security-token"] = credentials.security_token
        timestamp = v4_timestamp()
        request.headers["x-oss-date"] = timestamp
        request.headers["x-oss-content-sha256"] = UNSIGNED_PAYLOAD
        # One pass over the raw headers, decoded as httpx's Headers decode them (which they
        # do again on every access).
        encoding = request.headers.encoding
        headers = {
            name.decode(encoding).lower(): value.decode(encoding)
            for name, value in request.headers.raw
        }
        # Only headers the request really carries can be signed as additional ones.
        additional = [name for name in self._additional_headers if name in headers]
        bucket, key = _request_target(request)
        canonical = v4_canonical_request(
            request.method, bucket, key, request_query_params(request.url), headers, additional
        )
        string_to_sign = v4_string_to_sign(canonical, timestamp, self._region)
        signature = v4_signature(
            credentials.access_key_secret, timestamp, self._region, string_to_sign
        )
        authorization = (
            f"{V4_ALGORITHM} Credential={credentials.access_key_id}/"
            f"{v4_scope(timestamp, self._region)}, Signature={signature}"
        )
        if additional:
            authorization += f", AdditionalHeaders={';'.join(additional)}"
        request.headers["Authorization"] = authorization
        yield request


# --- presigned URLs ---------------------------------------------------------------------------


def _quoted_query(params: Mapping[str, str | None]) -> str:
    return "&".join(
        f"{quote(k, safe='')}={quote(v, safe='')}" if v else quote(k, safe="")
        for k, v in params.items()
    )


def presign_v1(
    credentials: Credentials,
    method: str,
    base_url: str,
    bucket: str | None,
    key: str | None,
    expires_at: int,
    params: Mapping[str, str | None] | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """A V1 presigned URL valid until the epoch second ``expires_at``.

    ``base_url`` is the URL of the object without a query; ``headers`` are those the user of the
    URL will send and that are signed (Content-Type, Content-MD5, x-oss-*).
    """
    query: dict[str, str | None] = dict(params or {})
    if credentials.security_token:
        query["security-token"] = credentials.security_token
    resource = canonical_resource_v1(bucket, key, query)
    string_to_sign = v1_string_to_sign(method, headers or {}, resource, str(expires_at))
    query["OSSAccessKeyId"] = credentials.access_key_id
    query["Expires"] = str(expires_at)
    query["Signature"] = v1_signature(credentials.access_key_secret, string_to_sign)
    return f"{base_url}?{_quoted_query(query)}"


def presign_v4(
    credentials: Credentials,
    method: str,
    base_url: str,
    bucket: str | None,
    key: str | None,
    expires_s: int,
    region: str,
    params: Mapping[str, str | None] | None = None,
    headers: Mapping[str, str] | None = None,
    now_epoch_s: float | None = None,
) -> str:
    """A V4 presigned URL valid for ``expires_s`` seconds from now (``x-oss-expires``)."""
    timestamp = v4_timestamp(now_epoch_s)
    query: dict[str, str | None] = dict(params or {})
    if credentials.security_token:
        query["x-oss-security-token"] = credentials.security_token
    query["x-oss-date"] = timestamp
    query["x-oss-expires"] = str(expires_s)
    query["x-oss-signature-version"] = V4_ALGORITHM
    query["x-oss-credential"] = f"{credentials.access_key_id}/{v4_scope(timestamp, region)}"
    canonical = v4_canonical_request(method, bucket, key, query, headers or {}, ())
    string_to_sign = v4_string_to_sign(canonical, timestamp, region)
    query["x-oss-signature"] = v4_signature(
        credentials.access_key_secret, timestamp, region, string_to_sign
    )
    return f"{base_url}?{_quoted_query(query)}"
