"""Parsing and building the OSS XML bodies."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from ossmount.oss import xml as oss_xml

LIST_V2 = b"""<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult>
  <Name>b</Name><Prefix>dir%2F</Prefix><MaxKeys>2</MaxKeys><EncodingType>url</EncodingType>
  <IsTruncated>true</IsTruncated><NextContinuationToken>tok%2Bx</NextContinuationToken>
  <Contents><Key>dir%2Fa%20b%2B%E6%96%87</Key><LastModified>2024-01-02T03:04:05.500Z</LastModified>
    <ETag>"ABC"</ETag><Type>Normal</Type><Size>12</Size><StorageClass>Standard</StorageClass></Contents>
  <Contents><Key>dir%2Fz</Key><LastModified>2024-01-02T03:04:05.000Z</LastModified>
    <ETag>"D-2"</ETag><Type>Multipart</Type><Size>0</Size><StorageClass>IA</StorageClass></Contents>
  <CommonPrefixes><Prefix>dir%2Fsub%2F</Prefix></CommonPrefixes>
</ListBucketResult>"""


def test_list_objects_v2_url_decoded() -> None:
    page = oss_xml.parse_list_objects_v2(LIST_V2)
    assert [o.key for o in page.objects] == ["dir/a b+文", "dir/z"]
    first = page.objects[0]
    assert (first.size, first.etag, first.object_type) == (12, '"ABC"', "Normal")
    assert first.last_modified == pytest.approx(1704164645.5)
    assert page.objects[1].storage_class == "IA"
    assert page.prefixes == ("dir/sub/",)
    assert page.is_truncated and page.next_token == "tok+x"


def test_list_objects_v2_last_page_without_encoding() -> None:
    body = (
        b"<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>a%20b</Key>"
        b'<LastModified>2024-01-02T03:04:05.000Z</LastModified><ETag>"E"</ETag>'
        b"<Size>1</Size></Contents></ListBucketResult>"
    )
    page = oss_xml.parse_list_objects_v2(body)
    assert page.objects[0].key == "a%20b"  # not URL-encoded: taken literally
    assert not page.is_truncated and page.next_token is None


def test_list_parts_and_uploads() -> None:
    parts = oss_xml.parse_list_parts(
        b"<ListPartsResult><IsTruncated>true</IsTruncated><NextPartNumberMarker>2"
        b"</NextPartNumberMarker><Part><PartNumber>1</PartNumber><LastModified>"
        b'2024-01-02T03:04:05.000Z</LastModified><ETag>"P1"</ETag><HashCrc64ecma>42'
        b"</HashCrc64ecma><Size>100</Size></Part></ListPartsResult>"
    )
    assert parts.parts[0].part_number == 1 and parts.parts[0].etag == '"P1"'
    assert parts.parts[0].crc64 == 42 and parts.parts[0].size == 100
    assert parts.is_truncated and parts.next_part_number_marker == 2
    uploads = oss_xml.parse_list_multipart_uploads(
        b"<ListMultipartUploadsResult><EncodingType>url</EncodingType><IsTruncated>false"
        b"</IsTruncated><NextKeyMarker>a%20b</NextKeyMarker><NextUploadIdMarker>U"
        b"</NextUploadIdMarker><Upload><Key>a%20b</Key><UploadId>U</UploadId><Initiated>"
        b"2024-01-02T03:04:05.000Z</Initiated></Upload></ListMultipartUploadsResult>"
    )
    assert uploads.uploads[0].key == "a b" and uploads.uploads[0].upload_id == "U"
    assert uploads.next_key_marker == "a b"


def test_delete_result_and_bucket_info() -> None:
    result = oss_xml.parse_delete_result(
        b"<DeleteResult><EncodingType>url</EncodingType><Deleted><Key>a%2Fb</Key></Deleted>"
        b"<Error><Key>c</Key><Code>AccessDenied</Code><Message>no</Message></Error>"
        b"</DeleteResult>"
    )
    assert result.deleted == ("a/b",)
    assert result.errors == {"c": ("AccessDenied", "no")}
    assert oss_xml.parse_delete_result(b"").deleted == ()
    info = oss_xml.parse_bucket_info(
        b"<BucketInfo><Bucket><Name>b</Name><Location>oss-cn-hangzhou</Location>"
        b"<CreationDate>2024-01-02T03:04:05.000Z</CreationDate><StorageClass>Standard"
        b"</StorageClass></Bucket></BucketInfo>"
    )
    assert (info.name, info.location) == ("b", "oss-cn-hangzhou")


def test_built_documents_round_trip() -> None:
    body = oss_xml.build_complete_multipart_upload([(1, '"E1"'), (2, '"E2"')])
    root = ET.fromstring(body)
    assert [(p.findtext("PartNumber"), p.findtext("ETag")) for p in root] == [
        ("1", '"E1"'),
        ("2", '"E2"'),
    ]
    delete = ET.fromstring(oss_xml.build_delete_objects(["a<&>b", "c"], quiet=True))
    assert delete.findtext("Quiet") == "true"
    assert [o.findtext("Key") for o in delete.findall("Object")] == ["a<&>b", "c"]


@pytest.mark.parametrize(
    "body",
    [
        b"not xml at all",
        b"<ListBucketResult><IsTruncated>false",  # truncated
        b"<Other/>",  # wrong document
        b"<ListBucketResult><Contents><Key>k</Key></Contents></ListBucketResult>",  # no Size
        # entity expansion is refused, never evaluated
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><ListBucketResult>&a;'
        b"</ListBucketResult>",
    ],
)
def test_malformed_documents_raise_xml_error(body: bytes) -> None:
    with pytest.raises(oss_xml.XmlError):
        oss_xml.parse_list_objects_v2(body)


def test_timestamps() -> None:
    assert oss_xml.parse_iso8601("1970-01-01T00:00:10.250Z") == 10.25
    assert oss_xml.parse_http_date("Thu, 01 Jan 1970 00:00:10 GMT") == 10.0
    assert oss_xml.parse_http_date("garbage") == 0.0
    assert oss_xml.format_iso8601(10.25) == "1970-01-01T00:00:10.250Z"
