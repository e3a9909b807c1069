"""Live channels: their configuration is stored and returned as OSS does (PutLiveChannel,
ListLiveChannel, GetLiveChannelInfo, GetLiveChannelStat, GetLiveChannelHistory,
PutLiveChannelStatus, DeleteLiveChannel). RTMP ingest is not implemented: a channel is always
Idle, has no push history, and has no recorded fragments to build a VOD playlist from
(PostVodPlaylist and GetVodPlaylist answer InvalidArgument, as OSS does for a time span with
no fragments)."""

from __future__ import annotations

import dataclasses
import time

from ossmount.server import xmlio
from ossmount.server.errors import OssServerError, invalid_argument, malformed_xml
from ossmount.server.http import Response
from ossmount.server.operations.common import MAX_XML_BODY, Call, ServerContext, int_param
from ossmount.server.protocol import xml_response
from ossmount.server.store import LiveChannelRecord
from ossmount.server.xmlio import leaf, node

MAX_CHANNEL_NAME_BYTES = 1023
MAX_DESCRIPTION_BYTES = 128
DEFAULT_PLAYLIST = "playlist.m3u8"
CHANNEL_STATUSES = ("enabled", "disabled")


def _no_such_channel(name: str) -> OssServerError:
    return OssServerError(
        404,
        "NoSuchLiveChannel",
        "The specified live channel does not exist.",
        extra={"LiveChannel": name},
    )


def _channel(server: ServerContext, call: Call) -> LiveChannelRecord:
    name = call.require_key()
    channel = server.store.get_live_channel(call.require_bucket(), name)
    if channel is None:
        raise _no_such_channel(name)
    return channel


def _urls(server: ServerContext, channel: LiveChannelRecord) -> list[str]:
    host = f"{channel.bucket}.{server.endpoint_host}"
    return [
        node("PublishUrls", leaf("Url", f"rtmp://{host}/live/{channel.name}")),
        node("PlayUrls", leaf("Url", f"http://{host}/{channel.name}/{channel.playlist_name}")),
    ]


def _bounded_int(text: str | None, name: str, default: int, low: int, high: int) -> int:
    if text is None or text.strip() == "":
        return default
    if not text.strip().isdigit() or not low <= int(text) <= high:
        raise invalid_argument(f"{name} must be an integer between {low} and {high}", name, text)
    return int(text)


def _parse_configuration(call: Call, body: bytes) -> LiveChannelRecord:
    name = call.require_key()
    if "/" in name or len(name.encode("utf-8", errors="surrogateescape")) > MAX_CHANNEL_NAME_BYTES:
        raise invalid_argument("A live channel name holds no '/' and at most 1023 bytes.")
    root = xmlio.parse_body(body, "LiveChannelConfiguration")
    description = xmlio.child_text(root, "Description") or ""
    if len(description.encode("utf-8")) > MAX_DESCRIPTION_BYTES:
        raise invalid_argument("Description is longer than 128 bytes.", "Description")
    status = xmlio.child_text(root, "Status") or "enabled"
    if status not in CHANNEL_STATUSES:
        raise invalid_argument("Status must be enabled or disabled.", "Status", status)
    target = root.find("Target")
    if target is None:
        raise malformed_xml("A LiveChannelConfiguration needs a Target.")
    target_type = xmlio.child_text(target, "Type") or ""
    if target_type != "HLS":
        raise invalid_argument("The only target type is HLS.", "Type", target_type)
    playlist = xmlio.child_text(target, "PlaylistName") or DEFAULT_PLAYLIST
    if not playlist.endswith(".m3u8") or not 6 <= len(playlist) <= 128 or "/" in playlist:
        raise invalid_argument(
            "PlaylistName must end with .m3u8 and hold 6 to 128 characters, no '/'.",
            "PlaylistName",
            playlist,
        )
    return LiveChannelRecord(
        bucket=call.require_bucket(),
        name=name,
        description=description,
        status=status,
        target_type=target_type,
        frag_duration=_bounded_int(
            xmlio.child_text(target, "FragDuration"), "FragDuration", 5, 1, 100
        ),
        frag_count=_bounded_int(xmlio.child_text(target, "FragCount"), "FragCount", 3, 1, 100),
        playlist_name=playlist,
        mtime=time.time(),
    )


async def put_live_channel(server: ServerContext, call: Call) -> Response:
    channel = _parse_configuration(call, await call.request.body.read_all(MAX_XML_BODY))
    server.store.put_live_channel(channel)
    return xml_response(node("CreateLiveChannelResult", *_urls(server, channel)))


async def put_live_channel_status(server: ServerContext, call: Call) -> Response:
    status = call.param("status")
    if status not in CHANNEL_STATUSES:
        raise invalid_argument("status must be enabled or disabled.", "status", status)
    channel = _channel(server, call)
    server.store.put_live_channel(dataclasses.replace(channel, status=status, mtime=time.time()))
    return Response(200)


async def get_live_channel_info(server: ServerContext, call: Call) -> Response:
    channel = _channel(server, call)
    body = node(
        "LiveChannelConfiguration",
        leaf("Description", channel.description),
        leaf("Status", channel.status),
        node(
            "Target",
            leaf("Type", channel.target_type),
            leaf("FragDuration", channel.frag_duration),
            leaf("FragCount", channel.frag_count),
            leaf("PlaylistName", channel.playlist_name),
        ),
    )
    return xml_response(body)


async def get_live_channel_stat(server: ServerContext, call: Call) -> Response:
    _channel(server, call)
    return xml_response(node("LiveChannelStat", leaf("Status", "Idle")))


async def get_live_channel_history(server: ServerContext, call: Call) -> Response:
    _channel(server, call)
    return xml_response(node("LiveChannelHistory"))


async def delete_live_channel(server: ServerContext, call: Call) -> Response:
    if not server.store.delete_live_channel(call.require_bucket(), call.require_key()):
        raise _no_such_channel(call.require_key())
    return Response(204)


async def list_live_channels(server: ServerContext, call: Call) -> Response:
    prefix = call.param("prefix")
    marker = call.param("marker")
    max_keys = int_param(call, "max-keys", 100, 1, 1000)
    channels = server.store.list_live_channels(call.require_bucket(), prefix, marker, max_keys + 1)
    truncated = len(channels) > max_keys
    channels = channels[:max_keys]
    items = [
        node(
            "LiveChannel",
            leaf("Name", channel.name),
            leaf("Description", channel.description),
            leaf("Status", channel.status),
            leaf("LastModified", xmlio.iso8601(channel.mtime)),
            *_urls(server, channel),
        )
        for channel in channels
    ]
    body = node(
        "ListLiveChannelResult",
        leaf("Prefix", prefix),
        leaf("Marker", marker),
        leaf("MaxKeys", max_keys),
        leaf("IsTruncated", truncated),
        leaf("NextMarker", channels[-1].name if truncated else ""),
        *items,
    )
    return xml_response(body)


async def vod_playlist(server: ServerContext, call: Call) -> Response:
    """PostVodPlaylist (POST channel/playlist?vod) and GetVodPlaylist (GET channel?vod): with
    no RTMP ingest there are never fragments to list."""
    name = call.require_key()
    if call.request.method == "POST":
        name = name.rpartition("/")[0] or name
    if server.store.get_live_channel(call.require_bucket(), name) is None:
        raise _no_such_channel(name)
    for param in ("startTime", "endTime"):
        if not call.param(param).isdigit():
            raise invalid_argument(f"{param} must be a Unix time", param, call.param(param))
    if int(call.param("endTime")) <= int(call.param("startTime")):
        raise invalid_argument("endTime must be after startTime", "endTime", call.param("endTime"))
    raise invalid_argument("No ts file found in the specified time span.")
