"""Signing: the pure canonical-string functions give exactly what oss2 computes.

oss2 signs its own Request objects; the tests sign the same request both ways, taking the
date oss2 put in the headers, and compare the Authorization values.
"""

from __future__ import annotations

import calendar
import re
import time
from urllib.parse import parse_qsl, urlsplit

import oss2
import oss2.http
import pytest

from ossmount.oss import signer
from ossmount.oss.signer import Credentials

AK, SK, TOKEN = "LTAI-test", "secret/with+chars=", "sts-token-value"
REGION = "cn-hangzhou"
KEYS = ["plain.txt", "dir/sub/file", "with space", "ünïcødé/文件", "a+b%c?d#e", "a//b", ""]
PARAM_SETS: list[dict[str, str]] = [
    {},
    {"uploads": ""},
    {"partNumber": "3", "uploadId": "0004B9895DBBB6EC98E"},
    {"symlink": ""},
    {"append": "", "position": "1024"},
    {"objectMeta": ""},
    {"prefix": "a/b", "delimiter": "/", "list-type": "2", "continuation-token": "tok/+="},
    {"response-content-type": "text/plain", "x-oss-process": "image/resize"},
]
HEADERS = {
    "Content-Type": "application/octet-stream",
    "Content-MD5": "1B2M2Y8AsgTpgAmY7PhCfg==",
    "x-oss-meta-Mode": "33188",
    "X-OSS-Forbid-Overwrite": "true",
    "Range": "bytes=0-99",
}


def oss2_request(method: str, params: dict[str, str]) -> oss2.http.Request:
    return oss2.http.Request(
        method,
        "http://unused",
        params=dict(params),
        headers=dict(HEADERS),
        region=REGION,
        product="oss",
    )


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("params", PARAM_SETS)
@pytest.mark.parametrize("token", [None, TOKEN])
def test_v1_header_signature_matches_oss2(
    key: str, params: dict[str, str], token: str | None
) -> None:
    auth = oss2.StsAuth(AK, SK, token) if token else oss2.Auth(AK, SK)
    request = oss2_request("PUT", params)
    auth._sign_request(request, "bucket-1", key)
    expected = request.headers["authorization"]

    headers = {k: v for k, v in request.headers.items() if v is not None and k != "authorization"}
    resource = signer.canonical_resource_v1("bucket-1", key, dict(params))
    string_to_sign = signer.v1_string_to_sign("PUT", headers, resource)
    assert expected == f"OSS {AK}:{signer.v1_signature(SK, string_to_sign)}"


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("params", PARAM_SETS)
@pytest.mark.parametrize("additional", [(), ("range",), ("range", "host")])
def test_v4_header_signature_matches_oss2(
    key: str, params: dict[str, str], additional: tuple[str, ...]
) -> None:
    auth = oss2.AuthV4(AK, SK)
    request = oss2_request("GET", params)
    request.headers["Host"] = "bucket-1.oss-cn-hangzhou.aliyuncs.com"
    auth._sign_request(request, "bucket-1", key, in_additional_headers=set(additional) or None)
    expected = request.headers["authorization"]
    parsed = signer.parse_v4_authorization(expected)
    assert parsed.access_key_id == AK and parsed.region == REGION

    headers = {k: v for k, v in request.headers.items() if v is not None and k != "authorization"}
    timestamp = headers["x-oss-date"]
    canonical = signer.v4_canonical_request(
        "GET", "bucket-1", key, dict(params), headers, parsed.additional_headers
    )
    string_to_sign = signer.v4_string_to_sign(canonical, timestamp, REGION)
    assert signer.v4_signature(SK, timestamp, REGION, string_to_sign) == parsed.signature


def test_service_level_resource_and_uri() -> None:
    assert signer.canonical_resource_v1(None, None, {"prefix": "x"}) == "/"
    assert signer.canonical_resource_v1("b", "", {"acl": None}) == "/b/?acl"
    canonical = signer.v4_canonical_request("GET", None, None, {}, {}, ())
    assert canonical.split("\n")[1] == "/"


def test_presign_v1_matches_oss2() -> None:
    bucket = oss2.Bucket(oss2.Auth(AK, SK), "http://127.0.0.1:9000", "bucket-1")
    url = bucket.sign_url("GET", "dir/ünï code+x", 600, slash_safe=True)
    query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    ours = signer.presign_v1(
        Credentials(AK, SK),
        "GET",
        "http://127.0.0.1:9000/x",
        "bucket-1",
        "dir/ünï code+x",
        int(query["Expires"]),
    )
    assert dict(parse_qsl(urlsplit(ours).query))["Signature"] == query["Signature"]


def test_presign_v4_matches_oss2() -> None:
    bucket = oss2.Bucket(oss2.AuthV4(AK, SK), "http://127.0.0.1:9000", "bucket-1", region=REGION)
    url = bucket.sign_url("GET", "dir/file name", 600, slash_safe=True)
    query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    moment = calendar.timegm(time.strptime(query["x-oss-date"], "%Y%m%dT%H%M%SZ"))
    ours = signer.presign_v4(
        Credentials(AK, SK),
        "GET",
        "http://127.0.0.1:9000/x",
        "bucket-1",
        "dir/file name",
        600,
        REGION,
        now_epoch_s=moment,
    )
    assert dict(parse_qsl(urlsplit(ours).query))["x-oss-signature"] == query["x-oss-signature"]


def test_secrets_stay_out_of_reprs() -> None:
    text = repr(Credentials(AK, "very-secret", "very-token"))
    assert AK in text and "very-secret" not in text and "very-token" not in text


@pytest.mark.parametrize(
    "value",
    [
        "OSS AK:sig",
        "OSS4-HMAC-SHA256 Signature=abc",
        "OSS4-HMAC-SHA256 Credential=AK/d/r/oss/x, Signature=a",
        "OSS4-HMAC-SHA256 Credential",
    ],
)
def test_malformed_v4_authorization_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match=re.compile(".+")):
        signer.parse_v4_authorization(value)
