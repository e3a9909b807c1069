"""Verifying request signatures: V1 and V4, in headers and in presigned URLs, STS tokens.

The server recomputes the signature with the same pure functions the client signs with
(ossmount.oss.signer) and compares in constant time. Four ways a request can carry credentials:

- ``Authorization: OSS AK:signature`` (V1, HMAC-SHA1 over Date and the canonical resource),
- ``Authorization: OSS4-HMAC-SHA256 Credential=AK/date/region/oss/aliyun_v4_request, ...``,
- a V1 presigned URL (``OSSAccessKeyId``, ``Expires`` as epoch seconds, ``Signature``),
- a V4 presigned URL (``x-oss-credential``, ``x-oss-date``, ``x-oss-expires`` seconds,
  ``x-oss-signature``),
- and V2, which oss2 still offers (AuthV2): ``Authorization: OSS2 AccessKeyId:AK,
  [AdditionalHeaders:a;b,]Signature:sig`` (HMAC-SHA256 of V1's fields, the x-oss-* and
  additional headers, and the resource with every query parameter), or a V2 presigned URL
  (``x-oss-signature-version=OSS2``, ``x-oss-access-key-id``, ``x-oss-expires`` as an epoch
  second, ``x-oss-signature``). ossmount's client never signs V2, so its canonical string is
  here rather than in ossmount.oss.signer.

Anything else is anonymous; whether an anonymous request may proceed is the bucket ACL's call
(app.py). Header-signed requests must be dated within 15 minutes of the server clock.
"""

from __future__ import annotations

import base64
import calendar
import datetime
import functools
import hashlib
import hmac
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_tz
from urllib.parse import quote

from ossmount.oss.signer import (
    V4_ALGORITHM,
    Credentials,
    canonical_resource_v1,
    parse_v4_authorization,
    parse_v4_credential,
    v1_signature,
    v1_string_to_sign,
    v4_canonical_request,
    v4_signing_key,
    v4_string_to_sign,
)
from ossmount.server.errors import OssServerError, invalid_argument

log = logging.getLogger(__name__)

MAX_CLOCK_SKEW_S = 15 * 60
V2_VERSION = "OSS2"
# A V4 signing key depends on the secret, the day and the region only: the last few are kept,
# which saves four HMACs a request.
_cached_signing_key = functools.lru_cache(maxsize=64)(v4_signing_key)


def _v4_signature(secret: str, timestamp: str, region: str, string_to_sign: str) -> str:
    """signer.v4_signature, with the signing key from the cache."""
    key = _cached_signing_key(secret, timestamp[:8], region)
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


V4_MAX_EXPIRES_S = 7 * 24 * 3600


@dataclass(frozen=True)
class SignedRequest:
    """What a signature covers, as the router resolved it."""

    method: str
    bucket: str | None
    key: str | None
    params: Mapping[str, str | None]
    headers: Mapping[str, str]  # lower-case names


@dataclass(frozen=True)
class Principal:
    """Who sent the request: an access key id, or None for anonymous."""

    access_key_id: str | None

    @property
    def anonymous(self) -> bool:
        return self.access_key_id is None


ANONYMOUS = Principal(None)


def _access_denied(message: str) -> OssServerError:
    return OssServerError(403, "AccessDenied", message)


def _check_clock_skew(epoch: float, now: float) -> None:
    """A header-signed request must be dated within MAX_CLOCK_SKEW_S of the server clock."""
    if abs(epoch - now) > MAX_CLOCK_SKEW_S:
        raise OssServerError(
            403,
            "RequestTimeTooSkewed",
            "The difference between the request time and the current time is too large.",
        )


def _signature_mismatch(string_to_sign: str, access_key_id: str) -> OssServerError:
    return OssServerError(
        403,
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method.",
        extra={"StringToSign": string_to_sign, "OSSAccessKeyId": access_key_id},
    )


class Verifier:
    """Checks signatures against a fixed set of credentials."""

    def __init__(self, credentials: list[Credentials]) -> None:
        self._by_key = {cred.access_key_id: cred for cred in credentials}

    def _lookup(self, access_key_id: str) -> Credentials:
        credentials = self._by_key.get(access_key_id)
        if credentials is None:
            raise OssServerError(
                403,
                "InvalidAccessKeyId",
                "The OSS Access Key Id you provided does not exist in our records.",
                extra={"OSSAccessKeyId": access_key_id},
            )
        return credentials

    @staticmethod
    def _check_token(credentials: Credentials, token: str | None) -> None:
        expected = credentials.security_token
        if expected is None:
            return
        if token is None or not hmac.compare_digest(token.encode(), expected.encode()):
            raise OssServerError(
                403,
                "InvalidAccessKeyId",
                "The security token you provided is invalid.",
                extra={"OSSAccessKeyId": credentials.access_key_id},
            )

    def verify(
        self, request: SignedRequest, now: float | None = None, region: str | None = None
    ) -> Principal:
        """The principal of a correctly signed request; raises OssServerError otherwise.

        `region`: the region the server serves; a V4 signature scoped to any other is refused
        (as OSS does). None accepts every region.
        """
        now = time.time() if now is None else now
        authorization = request.headers.get("authorization")
        params = request.params
        if authorization is not None:
            if authorization.startswith("OSS "):
                return self._verify_v1_header(request, authorization, now)
            if authorization.startswith(V2_VERSION + " "):
                return self._verify_v2_header(request, authorization, now)
            if authorization.startswith(V4_ALGORITHM):
                return self._verify_v4_header(request, authorization, now, region)
            raise invalid_argument("Authorization header is invalid.", "Authorization", "")
        if "Signature" in params or "OSSAccessKeyId" in params:
            return self._verify_v1_url(request, now)
        if params.get("x-oss-signature-version") == V2_VERSION:
            return self._verify_v2_url(request, now)
        if params.get("x-oss-signature-version") == V4_ALGORITHM or "x-oss-signature" in params:
            return self._verify_v4_url(request, now, region)
        return ANONYMOUS

    # --- V1 ------------------------------------------------------------------------------

    def _verify_v1_header(
        self, request: SignedRequest, authorization: str, now: float
    ) -> Principal:
        access_key_id, sep, signature = authorization[4:].strip().rpartition(":")
        if not sep or not access_key_id:
            raise invalid_argument("Authorization header is invalid.", "Authorization", "")
        credentials = self._lookup(access_key_id)
        self._check_token(credentials, request.headers.get("x-oss-security-token"))
        self._check_date(request.headers.get("x-oss-date") or request.headers.get("date"), now)
        resource = canonical_resource_v1(request.bucket, request.key, request.params)
        string_to_sign = v1_string_to_sign(request.method, request.headers, resource)
        expected = v1_signature(credentials.access_key_secret, string_to_sign)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise _signature_mismatch(string_to_sign, access_key_id)
        return Principal(access_key_id)

    def _verify_v1_url(self, request: SignedRequest, now: float) -> Principal:
        params = request.params
        access_key_id = params.get("OSSAccessKeyId") or ""
        expires = params.get("Expires") or ""
        signature = params.get("Signature") or ""
        if not access_key_id or not signature or not expires.isdigit():
            raise _access_denied("Presigned URL lacks OSSAccessKeyId, Expires or Signature.")
        credentials = self._lookup(access_key_id)
        if int(expires) < now:
            raise _access_denied("Request has expired.")
        self._check_token(credentials, params.get("security-token"))
        resource = canonical_resource_v1(request.bucket, request.key, params)
        string_to_sign = v1_string_to_sign(request.method, request.headers, resource, expires)
        expected = v1_signature(credentials.access_key_secret, string_to_sign)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise _signature_mismatch(string_to_sign, access_key_id)
        return Principal(access_key_id)

    # --- V2 ------------------------------------------------------------------------------

    def _verify_v2_header(
        self, request: SignedRequest, authorization: str, now: float
    ) -> Principal:
        fields = {}
        for item in authorization[len(V2_VERSION) + 1 :].split(","):
            name, sep, value = item.strip().partition(":")
            if not sep:
                raise invalid_argument("Authorization header is invalid.", "Authorization", "")
            fields[name] = value
        access_key_id = fields.get("AccessKeyId", "")
        signature = fields.get("Signature", "")
        if not access_key_id or not signature:
            raise invalid_argument("Authorization header is invalid.", "Authorization", "")
        credentials = self._lookup(access_key_id)
        self._check_token(credentials, request.headers.get("x-oss-security-token"))
        self._check_date(request.headers.get("x-oss-date") or request.headers.get("date"), now)
        additional = _v2_additional_headers(fields.get("AdditionalHeaders", ""))
        date = request.headers.get("date", "")
        string_to_sign = v2_string_to_sign(request, request.params, additional, date)
        _check_v2_signature(credentials, string_to_sign, signature, access_key_id)
        return Principal(access_key_id)

    def _verify_v2_url(self, request: SignedRequest, now: float) -> Principal:
        params = dict(request.params)
        signature = params.pop("x-oss-signature", None) or ""
        access_key_id = params.get("x-oss-access-key-id") or ""
        expires = params.get("x-oss-expires") or ""
        if not access_key_id or not signature or not expires.isdigit():
            raise _access_denied(
                "Presigned URL lacks x-oss-access-key-id, x-oss-expires or x-oss-signature."
            )
        credentials = self._lookup(access_key_id)
        if int(expires) < now:
            raise _access_denied("Request has expired.")
        self._check_token(credentials, params.get("security-token"))
        additional = _v2_additional_headers(params.get("x-oss-additional-headers") or "")
        string_to_sign = v2_string_to_sign(request, params, additional, expires)
        _check_v2_signature(credentials, string_to_sign, signature, access_key_id)
        return Principal(access_key_id)

    # --- V4 ------------------------------------------------------------------------------

    def _verify_v4_header(
        self, request: SignedRequest, authorization: str, now: float, region: str | None
    ) -> Principal:
        try:
            parsed = parse_v4_authorization(authorization)
        except ValueError as exc:
            raise invalid_argument(f"Authorization header is invalid: {exc}") from None
        credentials = self._lookup(parsed.access_key_id)
        if region is not None and parsed.region != region:
            raise OssServerError(
                400,
                "InvalidArgument",
                "Invalid signing region in Authorization header.",
                ec="0002-00000226",
            )
        self._check_token(credentials, request.headers.get("x-oss-security-token"))
        timestamp = request.headers.get("x-oss-date", "")
        epoch = _parse_v4_timestamp(timestamp)
        if epoch is None or timestamp[:8] != parsed.date:
            raise _access_denied("x-oss-date is missing, malformed, or not the credential date.")
        _check_clock_skew(epoch, now)
        canonical = v4_canonical_request(
            request.method,
            request.bucket,
            request.key,
            request.params,
            request.headers,
            parsed.additional_headers,
        )
        string_to_sign = v4_string_to_sign(canonical, timestamp, parsed.region)
        expected = _v4_signature(
            credentials.access_key_secret, timestamp, parsed.region, string_to_sign
        )
        if not hmac.compare_digest(expected.encode(), parsed.signature.encode()):
            raise _signature_mismatch(string_to_sign, parsed.access_key_id)
        return Principal(parsed.access_key_id)

    def _verify_v4_url(
        self, request: SignedRequest, now: float, served_region: str | None
    ) -> Principal:
        params = dict(request.params)
        signature = params.pop("x-oss-signature", None) or ""
        try:
            access_key_id, date, region, _product = parse_v4_credential(
                params.get("x-oss-credential") or ""
            )
        except ValueError:
            raise _access_denied("Presigned URL has a malformed x-oss-credential.") from None
        credentials = self._lookup(access_key_id)
        if served_region is not None and region != served_region:
            raise _access_denied("The signing region in credential is invalid.")
        timestamp = params.get("x-oss-date") or ""
        epoch = _parse_v4_timestamp(timestamp)
        expires = params.get("x-oss-expires") or ""
        if epoch is None or timestamp[:8] != date or not expires.isdigit() or not signature:
            raise _access_denied(
                "Presigned URL lacks x-oss-date, x-oss-expires or x-oss-signature."
            )
        if int(expires) > V4_MAX_EXPIRES_S:
            raise invalid_argument("x-oss-expires is too large.", "x-oss-expires", expires)
        if epoch + int(expires) < now:
            raise _access_denied("Request has expired.")
        if epoch - now > MAX_CLOCK_SKEW_S:
            raise _access_denied("Presigned URL is dated in the future.")
        self._check_token(credentials, params.get("x-oss-security-token"))
        additional = tuple(
            name for name in (params.get("x-oss-additional-headers") or "").split(";") if name
        )
        canonical = v4_canonical_request(
            request.method, request.bucket, request.key, params, request.headers, additional
        )
        string_to_sign = v4_string_to_sign(canonical, timestamp, region)
        expected = _v4_signature(credentials.access_key_secret, timestamp, region, string_to_sign)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise _signature_mismatch(string_to_sign, access_key_id)
        return Principal(access_key_id)

    @staticmethod
    def _check_date(value: str | None, now: float) -> None:
        if not value:
            raise _access_denied("The request has no Date header.")
        parsed = parsedate_tz(value)
        if parsed is None:
            raise _access_denied("The Date header is malformed.")
        epoch = calendar.timegm(parsed[:9]) - (parsed[9] or 0)
        _check_clock_skew(epoch, now)


def _v2_additional_headers(value: str) -> tuple[str, ...]:
    return tuple(sorted({name.strip().lower() for name in value.split(";") if name.strip()}))


def _v2_uri_encode(text: str) -> str:
    """Everything but letters, digits and ``-_.~`` percent-encoded ('/' too), as oss2 does."""
    return quote(text.encode("utf-8", errors="surrogateescape"), safe="")


def v2_string_to_sign(
    request: SignedRequest,
    params: Mapping[str, str | None],
    additional_headers: tuple[str, ...],
    date: str,
) -> str:
    """The V2 string to sign: V1's first fields, the x-oss-* and additional headers (lower-case
    names, sorted), the additional header names, and the encoded resource with every query
    parameter (sorted by encoded name)."""
    headers = request.headers
    signed = sorted(
        (name, value)
        for name, value in headers.items()
        if name.startswith("x-oss-") or name in additional_headers
    )
    canonical_headers = "".join(f"{name}:{value}\n" for name, value in signed)
    path = f"/{request.bucket}/{request.key or ''}" if request.bucket else "/"
    query = sorted(
        (_v2_uri_encode(name), _v2_uri_encode(value or "")) for name, value in params.items()
    )
    resource = _v2_uri_encode(path)
    if query:
        resource += "?" + "&".join(f"{name}={value}" if value else name for name, value in query)
    return "\n".join(
        [
            request.method,
            headers.get("content-md5", ""),
            headers.get("content-type", ""),
            date,
            canonical_headers + ";".join(additional_headers),
            resource,
        ]
    )


def _check_v2_signature(
    credentials: Credentials, string_to_sign: str, signature: str, access_key_id: str
) -> None:
    digest = hmac.new(
        credentials.access_key_secret.encode(), string_to_sign.encode(), hashlib.sha256
    ).digest()
    expected = base64.b64encode(digest).decode()
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise _signature_mismatch(string_to_sign, access_key_id)


def _parse_v4_timestamp(value: str) -> float | None:
    """Epoch seconds of ``20240101T000000Z``; None if it is not one (by hand: strptime cost
    more than the rest of a V4 check)."""
    digits = value[:8] + value[9:15]
    if len(value) != 16 or value[8] != "T" or value[15] != "Z":
        return None
    if not digits.isascii() or not digits.isdigit():
        return None
    try:
        moment = datetime.datetime(
            int(value[0:4]),
            int(value[4:6]),
            int(value[6:8]),
            int(value[9:11]),
            int(value[11:13]),
            int(value[13:15]),
            tzinfo=datetime.UTC,
        )
    except ValueError:
        return None
    return moment.timestamp()
