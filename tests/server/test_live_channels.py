"""Live channels through oss2 (V1 and V4): their configuration is stored, listed and returned;
with no RTMP ingest a channel is always Idle, has no history and no VOD fragments."""

from __future__ import annotations

import time

import oss2
import pytest
from oss2.exceptions import AccessDenied, InvalidArgument, NoSuchLiveChannel
from oss2.models import LiveChannelInfo, LiveChannelInfoTarget

from ossmount.server import RunningServer
from tests.conftest import TEST_BUCKET
from tests.server.conftest import RawClient, oss2_bucket_at


def _channel(playlist: str = "", status: str = "enabled", description: str = "") -> LiveChannelInfo:
    return LiveChannelInfo(
        status=status,
        description=description,
        target=LiveChannelInfoTarget(frag_duration=7, frag_count=4, playlist_name=playlist),
    )


def test_a_new_bucket_lists_no_channels(bucket: oss2.Bucket) -> None:
    listed = bucket.list_live_channel()
    assert listed.channels == []
    assert (listed.prefix, listed.marker, listed.max_keys, listed.is_truncated) == (
        "",
        "",
        100,
        False,
    )
    assert list(oss2.LiveChannelIterator(bucket)) == []


def test_create_get_stat_history_delete(bucket: oss2.Bucket, oss_server: RunningServer) -> None:
    with pytest.raises(NoSuchLiveChannel):
        bucket.get_live_channel("cam")
    created = bucket.create_live_channel("cam", _channel("cam.m3u8", description="front door"))
    host = f"{TEST_BUCKET}.127.0.0.1:{oss_server.port}"
    assert created.publish_url == f"rtmp://{host}/live/cam"
    assert created.play_url == f"http://{host}/cam/cam.m3u8"

    info = bucket.get_live_channel("cam")
    assert (info.status, info.description) == ("enabled", "front door")
    target = info.target
    assert (target.type, target.frag_duration, target.frag_count, target.playlist_name) == (
        "HLS",
        "7",
        "4",
        "cam.m3u8",
    )
    assert bucket.get_live_channel_stat("cam").status == "Idle"
    assert bucket.get_live_channel_history("cam").records == []

    bucket.put_live_channel_status("cam", "disabled")
    assert bucket.get_live_channel("cam").status == "disabled"
    bucket.put_live_channel_status("cam", "enabled")
    assert bucket.get_live_channel("cam").status == "enabled"

    assert bucket.delete_live_channel("cam").status == 204
    with pytest.raises(NoSuchLiveChannel):
        bucket.get_live_channel_stat("cam")
    with pytest.raises(NoSuchLiveChannel):
        bucket.delete_live_channel("cam")
    # A channel is no object: the bucket stays empty and can go.
    assert list(oss2.ObjectIteratorV2(bucket)) == []


def test_default_playlist_name(bucket: oss2.Bucket, oss_server: RunningServer) -> None:
    created = bucket.create_live_channel("plain", _channel())
    assert created.play_url.endswith("/plain/playlist.m3u8")
    assert bucket.get_live_channel("plain").target.playlist_name == "playlist.m3u8"


def test_list_pages_prefix_and_marker(bucket: oss2.Bucket) -> None:
    names = [f"ch{number:04d}" for number in range(150)] + ["other"]
    for name in names:
        bucket.create_live_channel(name, _channel())
    first = bucket.list_live_channel()
    assert len(first.channels) == 100 and first.is_truncated
    assert first.next_marker == "ch0099"
    assert [channel.name for channel in first.channels] == names[:100]
    channel = first.channels[0]
    assert channel.status == "enabled"
    assert abs(channel.last_modified - time.time()) < 3600
    assert channel.publish_url.endswith("/live/ch0000")
    rest = bucket.list_live_channel(prefix="ch", marker="ch0099", max_keys=1000)
    assert [channel.name for channel in rest.channels] == names[100:150]
    assert not rest.is_truncated and rest.prefix == "ch" and rest.marker == "ch0099"
    assert [info.name for info in oss2.LiveChannelIterator(bucket, max_keys=7)] == names
    assert bucket.list_live_channel(prefix="zz").channels == []


def test_channels_go_with_their_bucket(bucket: oss2.Bucket) -> None:
    other = oss2_bucket_at(bucket.endpoint, bucket.auth, "channels-bucket")
    other.create_bucket()
    other.create_live_channel("cam", _channel())
    other.delete_bucket()
    other.create_bucket()
    assert other.list_live_channel().channels == []


def test_bad_configurations_are_refused(bucket: oss2.Bucket, raw: RawClient) -> None:
    with pytest.raises(InvalidArgument):
        bucket.create_live_channel("c", _channel("no-suffix"))
    with pytest.raises(InvalidArgument):
        bucket.create_live_channel("c", _channel(status="paused"))
    with pytest.raises(InvalidArgument):
        bucket.create_live_channel("c", _channel(description="d" * 129))
    with pytest.raises(InvalidArgument):
        bucket.create_live_channel("c", LiveChannelInfo(target=LiveChannelInfoTarget(type="DASH")))
    response = raw.request("PUT", "c", params={"live": ""}, content=b"<LiveChannelConfiguration/>")
    assert response.status_code == 400
    assert "<Code>MalformedXML</Code>" in response.text
    bucket.create_live_channel("c", _channel())
    with pytest.raises(InvalidArgument):
        bucket.put_live_channel_status("c", "paused")
    assert bucket.list_live_channel().channels[0].name == "c"


def test_no_vod_fragments_without_ingest(bucket: oss2.Bucket) -> None:
    bucket.create_live_channel("cam", _channel())
    end = int(time.time()) - 60
    with pytest.raises(InvalidArgument):
        bucket.post_vod_playlist("cam", "vod.m3u8", start_time=end - 3600, end_time=end)
    with pytest.raises(InvalidArgument):
        bucket.get_vod_playlist("cam", start_time=end - 3600, end_time=end)
    with pytest.raises(NoSuchLiveChannel):
        bucket.get_vod_playlist("nope", start_time=end - 3600, end_time=end)


def test_anonymous_requests_are_refused(oss_server: RunningServer, bucket: oss2.Bucket) -> None:
    bucket.create_live_channel("cam", _channel())
    anonymous = oss2.Bucket(oss2.AnonymousAuth(), oss_server.endpoint, TEST_BUCKET)
    with pytest.raises(AccessDenied):
        anonymous.delete_live_channel("cam")
    with pytest.raises(AccessDenied):
        anonymous.list_live_channel()
    assert bucket.get_live_channel("cam").status == "enabled"


def test_live_on_other_methods_of_a_bucket_is_not_implemented(raw: RawClient) -> None:
    response = raw.request("PUT", None, params={"live": ""})
    assert response.status_code == 501
    assert "<Code>NotImplemented</Code>" in response.text
    assert "?live" in response.text
