"""The operations of the OSS REST API, one module a resource, and the table that names them.

`app.py` routes a request to an operation name; `OPERATIONS` maps the name to its handler,
an `async (ServerContext, Call) -> Response` function.
"""

from ossmount.server.operations import buckets, copy, listing, live, multipart, objects, tagging
from ossmount.server.operations.common import Call, Operation, ServerContext

OPERATIONS: dict[str, Operation] = {
    "ListBuckets": buckets.list_buckets,
    "PutBucket": buckets.put_bucket,
    "DeleteBucket": buckets.delete_bucket,
    "HeadBucket": buckets.head_bucket,
    "GetBucketAcl": buckets.get_bucket_acl,
    "PutBucketAcl": buckets.put_bucket_acl,
    "GetBucketInfo": buckets.get_bucket_info,
    "GetBucketLocation": buckets.get_bucket_location,
    "GetBucketStat": buckets.get_bucket_stat,
    "ListObjects": listing.list_objects,
    "ListObjectsV2": listing.list_objects_v2,
    "GetObject": objects.get_object,
    "HeadObject": objects.head_object,
    "GetObjectMeta": objects.get_object_meta,
    "PutObject": objects.put_object,
    "DeleteObject": objects.delete_object,
    "DeleteMultipleObjects": objects.delete_multiple_objects,
    "CopyObject": copy.copy_object,
    "AppendObject": objects.append_object,
    "PutSymlink": objects.put_symlink,
    "GetSymlink": objects.get_symlink,
    "GetObjectAcl": objects.get_object_acl,
    "PutObjectAcl": objects.put_object_acl,
    "InitiateMultipartUpload": multipart.initiate_multipart_upload,
    "UploadPart": multipart.upload_part,
    "UploadPartCopy": multipart.upload_part_copy,
    "CompleteMultipartUpload": multipart.complete_multipart_upload,
    "AbortMultipartUpload": multipart.abort_multipart_upload,
    "ListParts": multipart.list_parts,
    "ListMultipartUploads": multipart.list_multipart_uploads,
    "GetBucketVersioning": buckets.get_bucket_versioning,
    "ListLiveChannel": live.list_live_channels,
    "PutLiveChannel": live.put_live_channel,
    "PutLiveChannelStatus": live.put_live_channel_status,
    "GetLiveChannelInfo": live.get_live_channel_info,
    "GetLiveChannelStat": live.get_live_channel_stat,
    "GetLiveChannelHistory": live.get_live_channel_history,
    "DeleteLiveChannel": live.delete_live_channel,
    "GetVodPlaylist": live.vod_playlist,
    "PostVodPlaylist": live.vod_playlist,
    "GetObjectTagging": tagging.get_object_tagging,
    "PutObjectTagging": tagging.put_object_tagging,
    "DeleteObjectTagging": tagging.delete_object_tagging,
}

__all__ = ["OPERATIONS", "Call", "Operation", "ServerContext"]
