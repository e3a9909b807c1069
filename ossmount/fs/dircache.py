"""Directory listings, the stat cache and the negative cache, and the OSS calls that fill them.

What is a directory
-------------------
A directory is any key prefix ending in "/" that has something under it (an implicit
directory), a `dir/` marker object, or an ossfs/s3fs `dir_$folder$` marker. Listing the prefix
P with delimiter "/" gives objects (P + name) and common prefixes (P + name + "/"):

* the object whose key is P itself is P's own marker and is not an entry;
* an object `name_$folder$` is the directory `name`;
* a name that is both an object and a prefix is shown as the directory (the object cannot be
  reached through the mount) and logged once per key;
* names that cannot be file names (empty, from `a//b`; `.`; `..`; over 255 bytes) are left out
  and logged once per key.

Entries are sorted by name, so offsets into a snapshot are stable for as long as a directory
handle holds it.

Exact metadata
--------------
A listing carries size, ETag and Last-Modified, but no user metadata, so mode/uid/gid/mtime
(x-oss-meta-*) need a HEAD per object. Unless ``exact_metadata`` is off (ossfs's
readdir_optimize), a listing HEADs every entry concurrently (bounded by ``head_concurrency``).
HEAD results are kept in the stat cache and reused, without a new HEAD, for as long as a later
listing shows the same ETag, Last-Modified and size for the key; the TTL only governs lookups and
getattr, which have no listing to compare with.

Memory
------
Every cache here is bounded by entry count (listing entries, stat entries, negative entries),
so a million-object bucket costs at most the configured bounds plus the snapshots held by open
directory handles.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

import trio
from cachetools import LRUCache, TTLCache

from ossmount.fs.attrs import (
    KEY_MAX,
    AttrDefaults,
    Attributes,
    Kind,
    attributes_from_info,
    attributes_from_summary,
    directory_attributes,
    invalid_name_reason,
    native_symlink_path,
)
from ossmount.oss.client import OssClient
from ossmount.oss.errors import NotFound, OssError, first_failure
from ossmount.oss.model import ObjectInfo, ObjectSummary

log = logging.getLogger(__name__)

FOLDER_SUFFIX = "_$folder$"
LIST_PAGE_KEYS = 1000
# An ossfs symlink keeps its target in the body; anything longer is not a path.
SYMLINK_BODY_LIMIT = 4096


class WarnOnce:
    """Logs a warning the first time a key is seen, remembering a bounded number of keys."""

    def __init__(self, limit: int = 100_000) -> None:
        self._seen: set[str] = set()
        self._limit = limit

    def __call__(self, key: str, message: str, *args: object) -> None:
        if key in self._seen:
            return
        if len(self._seen) < self._limit:
            self._seen.add(key)
        log.warning(message, *args)


T = TypeVar("T")


class _Flight(Generic[T]):
    def __init__(self) -> None:
        self.done = trio.Event()
        # (result,) once the leader succeeded.
        self.outcome: tuple[T] | None = None
        self.error: Exception | None = None


class SingleFlight(Generic[T]):
    """Concurrent calls for the same key share one execution (one listing, one probe).

    Followers wait for the leader and get its result or its exception. If the leader was
    cancelled, a follower runs the call itself.
    """

    def __init__(self) -> None:
        self._flights: dict[str, _Flight[T]] = {}

    async def run(self, key: str, call: Callable[[], Awaitable[T]]) -> T:
        while (flight := self._flights.get(key)) is not None:
            await flight.done.wait()
            if flight.outcome is not None:
                return flight.outcome[0]
            if flight.error is not None:
                raise flight.error
        flight = _Flight()
        self._flights[key] = flight
        try:
            result = await call()
        except Exception as exc:
            flight.error = exc
            raise
        else:
            flight.outcome = (result,)
            return result
        finally:
            del self._flights[key]
            flight.done.set()


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One name in a directory listing, with the attributes known for it."""

    name: str
    attrs: Attributes
    # The marker object carrying the directory's metadata ("x/" or "x_$folder$"), if listed.
    marker_key: str | None = None


@dataclass(slots=True)
class DirSnapshot:
    """A whole listing of one prefix, sorted by name; offsets index ``entries``. Never changes
    once made: a directory handle reads from the snapshot it opened with."""

    prefix: str
    entries: tuple[DirEntry, ...]
    taken_at: float


class DirListing:
    """The cached listing of one prefix, kept up to date with this mount's own changes.

    Entries are held by name, so a create, unlink or rename in a directory of any size costs
    O(1) (``put``/``remove``); the sorted :class:`DirSnapshot` that opendir hands out is built
    on demand, once per change burst, and a snapshot already handed out is never modified
    (copy-on-write), so readdir never skips or repeats a name while the directory changes.
    """

    __slots__ = (
        "_entries",
        "_snapshot",
        "metadata_complete",
        "prefix",
        "subdirectories",
        "taken_at",
    )

    def __init__(
        self,
        prefix: str,
        entries: Sequence[DirEntry],
        taken_at: float,
        *,
        snapshot: DirSnapshot | None = None,
        metadata_complete: bool = True,
    ) -> None:
        self.prefix = prefix
        self.taken_at = taken_at
        # False for a listing fetched to answer lookups: its entries carry what the listing
        # says (no x-oss-meta-*, see Namespace.lookup), and readdir lists the directory again.
        self.metadata_complete = metadata_complete
        self._entries: dict[str, DirEntry] = {entry.name: entry for entry in entries}
        self._snapshot = snapshot
        # Entries that are directories, kept as entries change (st_nlink of the directory).
        self.subdirectories = sum(1 for entry in entries if entry.attrs.kind is Kind.DIR)

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, name: str) -> DirEntry | None:
        return self._entries.get(name)

    def put(self, entry: DirEntry) -> None:
        self.remove(entry.name)
        self._entries[entry.name] = entry
        self.subdirectories += entry.attrs.kind is Kind.DIR
        self._snapshot = None

    def remove(self, name: str) -> None:
        removed = self._entries.pop(name, None)
        if removed is not None:
            self.subdirectories -= removed.attrs.kind is Kind.DIR
            self._snapshot = None

    def snapshot(self) -> DirSnapshot:
        if self._snapshot is None:
            ordered = tuple(self._entries[name] for name in sorted(self._entries))
            self._snapshot = DirSnapshot(self.prefix, ordered, self.taken_at)
        return self._snapshot


def build_entries(
    prefix: str,
    objects: Sequence[ObjectSummary],
    prefixes: Sequence[str],
    defaults: AttrDefaults,
    *,
    dir_mtime_ns: int = 0,
    warn: Callable[..., None] | None = None,
) -> list[DirEntry]:
    """Turn one prefix's listing (all pages) into sorted directory entries (see module doc)."""
    warn_once = warn or WarnOnce()
    directories: dict[str, DirEntry] = {}
    files: dict[str, DirEntry] = {}
    dir_attrs = directory_attributes(defaults, dir_mtime_ns)
    for common_prefix in prefixes:
        name = common_prefix[len(prefix) : -1]
        reason = invalid_name_reason(name)
        if reason is not None:
            warn_once(common_prefix, "skipping keys under %r: %s", common_prefix, reason)
            continue
        directories[name] = DirEntry(name, dir_attrs)
    for summary in objects:
        name = summary.key[len(prefix) :]
        if name == "":
            continue  # the directory's own marker
        if name.endswith(FOLDER_SUFFIX):
            dir_name = name[: -len(FOLDER_SUFFIX)]
            if invalid_name_reason(dir_name) is None:
                existing = directories.get(dir_name)
                if existing is None or existing.marker_key is None:
                    directories[dir_name] = DirEntry(dir_name, dir_attrs, summary.key)
                continue
        reason = invalid_name_reason(name)
        if reason is not None:
            warn_once(summary.key, "skipping key %r: %s", summary.key, reason)
            continue
        files[name] = DirEntry(name, attributes_from_summary(summary, defaults))
    for name in files.keys() & directories.keys():
        warn_once(
            prefix + name,
            "object %r is hidden by the directory %r of the same name",
            prefix + name,
            prefix + name + "/",
        )
        del files[name]
    merged = {**files, **directories}
    return [merged[name] for name in sorted(merged)]


def _drop_keys_under(cache: MutableMapping[str, Any], prefix: str) -> None:
    """Remove every key of ``cache`` that starts with ``prefix`` (a scan: for directory renames,
    which copy every object anyway)."""
    for key in [key for key in cache if key.startswith(prefix)]:
        cache.pop(key, None)


class ListingCache:
    """Recent directory listings, bounded by their total number of entries, with a TTL."""

    def __init__(
        self, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: LRUCache[str, DirListing] = LRUCache(
            maxsize=max(1, max_entries), getsizeof=lambda listing: len(listing) + 1
        )
        # Lookups answered from the cache, and not (for `ossmount status`).
        self.hits = 0
        self.misses = 0

    def get(self, prefix: str) -> DirListing | None:
        listing = self._cache.get(prefix)
        if listing is None:
            self.misses += 1
            return None
        if self._clock() - listing.taken_at >= self._ttl_s:
            self._cache.pop(prefix, None)
            self.misses += 1
            return None
        self.hits += 1
        return listing

    def put(self, listing: DirListing) -> None:
        """Store ``listing``, or store it again after it changed in place (its size counts)."""
        if self._ttl_s <= 0:
            return
        try:
            self._cache[listing.prefix] = listing
        except ValueError:
            self._cache.pop(listing.prefix, None)
            log.debug(
                "listing of %r (%d entries) exceeds the listing cache", listing.prefix, len(listing)
            )

    def invalidate(self, prefix: str) -> None:
        self._cache.pop(prefix, None)

    def invalidate_under(self, prefix: str) -> None:
        """Drop the listings of ``prefix`` and of every directory below it."""
        _drop_keys_under(self._cache, prefix)

    def __len__(self) -> int:
        return len(self._cache)


@dataclass(frozen=True, slots=True)
class _StatRecord:
    attrs: Attributes
    fetched_at: float


class StatCache:
    """Exact attributes from HEADs, by key (directories: "name/"), bounded by entry count."""

    def __init__(
        self, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: LRUCache[str, _StatRecord] = LRUCache(maxsize=max(1, max_entries))
        # Lookups answered from the cache, and not (for `ossmount status`).
        self.hits = 0
        self.misses = 0

    def get_fresh(self, key: str) -> Attributes | None:
        """Attributes fetched less than the TTL ago."""
        record = self._cache.get(key)
        if record is None or self._clock() - record.fetched_at >= self._ttl_s:
            self.misses += 1
            return None
        self.hits += 1
        return record.attrs

    def get_for_version(self, key: str, listed: Attributes) -> Attributes | None:
        """Attributes of exactly the object version ``listed`` shows, however old.

        The version is its ETag, Last-Modified and (for regular files) size.
        """
        record = self._cache.get(key)
        attrs = record.attrs if record is not None else None
        if (
            attrs is None
            or attrs.etag != listed.etag
            or attrs.last_modified != listed.last_modified
            or (attrs.kind is Kind.FILE and attrs.size != listed.size)
        ):
            self.misses += 1
            return None
        self.hits += 1
        return attrs

    def put(self, key: str, attrs: Attributes) -> None:
        self._cache[key] = _StatRecord(attrs, self._clock())

    def invalidate(self, key: str) -> None:
        self._cache.pop(key, None)

    def invalidate_under(self, prefix: str) -> None:
        _drop_keys_under(self._cache, prefix)

    def __len__(self) -> int:
        return len(self._cache)


class NegativeCache:
    """Keys recently found not to exist."""

    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self._cache: TTLCache[str, bool] | None = (
            TTLCache(maxsize=max(1, max_entries), ttl=ttl_s) if ttl_s > 0 else None
        )

    def __contains__(self, key: str) -> bool:
        return self._cache is not None and key in self._cache

    def add(self, key: str) -> None:
        if self._cache is not None:
            self._cache[key] = True

    def discard(self, key: str) -> None:
        if self._cache is not None:
            self._cache.pop(key, None)

    def discard_under(self, prefix: str) -> None:
        if self._cache is not None:
            _drop_keys_under(self._cache, prefix)


class DiskMetadataCache:
    """Exact file attributes kept in SQLite across mounts, valid per object version.

    A row is used only while a listing shows the same ETag, Last-Modified and size for its key, so a
    stale row can never show wrong metadata; it only costs the HEAD it failed to save. Calls
    block briefly (one range query and one batched write per directory listing) and are made
    from a worker thread.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, etag TEXT NOT NULL, "
            "last_modified REAL NOT NULL, attrs TEXT NOT NULL)"
        )
        self._lock = threading.Lock()

    def load_prefix(self, prefix: str) -> dict[str, Attributes]:
        """Every stored file under ``prefix`` (deeper keys included)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, attrs FROM meta WHERE key >= ? AND key < ?",
                (prefix, prefix + "\U0010ffff"),
            ).fetchall()
        return {key: _attrs_from_json(text) for key, text in rows}

    def store(self, items: Sequence[tuple[str, Attributes]]) -> None:
        rows = [
            (key, attrs.etag, attrs.last_modified, _attrs_to_json(attrs))
            for key, attrs in items
            if attrs.etag is not None
        ]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?, ?, ?)", rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _attrs_to_json(attrs: Attributes) -> str:
    fields = {name: getattr(attrs, name) for name in Attributes.__dataclass_fields__}
    fields["kind"] = attrs.kind.value
    return json.dumps(fields)


def _attrs_from_json(text: str) -> Attributes:
    fields = json.loads(text)
    fields["kind"] = Kind(fields["kind"])
    return Attributes(**fields)


@dataclass(frozen=True, slots=True)
class NamespaceOptions:
    """The parts of the mount configuration the namespace needs."""

    exact_metadata: bool = True
    head_concurrency: int = 64
    list_cache_ttl_s: float = 60.0
    stat_cache_ttl_s: float = 60.0
    negative_ttl_s: float = 1.0
    list_cache_entries: int = 100_000
    stat_cache_entries: int = 100_000
    list_page_keys: int = LIST_PAGE_KEYS
    # Objects listed at most this size are fetched whole by one GET where a HEAD would do (the
    # body goes to the read path); 0: always HEAD.
    small_file_get_bytes: int = 64 * 1024


class Namespace:
    """Answers "what is at this key" and "what is in this directory" from caches or OSS."""

    def __init__(
        self,
        client: OssClient,
        bucket: str,
        defaults: AttrDefaults,
        options: NamespaceOptions,
        *,
        dir_mtime_ns: int,
        head_clients: Sequence[OssClient] = (),
        disk_cache: DiskMetadataCache | None = None,
        on_small_body: Callable[[str, str, bytes], None] | None = None,
        holds_body: Callable[[str, str, int], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``on_small_body(key, etag, body)`` receives the whole body of a version of an object
        that a small-object GET fetched in place of a HEAD (the mount's read cache)."""
        self.client = client
        self.disk_cache = disk_cache
        self._on_small_body = on_small_body
        # Whether the read path already holds a version's whole body (then a HEAD will do).
        self._holds_body = holds_body
        # HEADs go round-robin over several small connection pools when given: httpx's pool
        # spends time proportional to its size on every request, so for thousands of
        # concurrent HEADs, eight pools of four connections cost half the CPU of one of 32.
        self._head_clients = tuple(head_clients) or (client,)
        self._head_turn = 0
        self.bucket = bucket
        self.defaults = defaults
        self.options = options
        self._dir_mtime_ns = dir_mtime_ns
        self._clock = clock
        self._listings = ListingCache(options.list_cache_ttl_s, options.list_cache_entries, clock)
        self._stats = StatCache(options.stat_cache_ttl_s, options.stat_cache_entries, clock)
        self._negative = NegativeCache(options.negative_ttl_s, options.stat_cache_entries)
        self._head_limiter = trio.CapacityLimiter(options.head_concurrency)
        self.warn_once = WarnOnce()
        self._listing_flights: SingleFlight[DirSnapshot] = SingleFlight()
        self._probe_flights: SingleFlight[Attributes | None] = SingleFlight()
        self._lookup_listing_flights: SingleFlight[DirListing | None] = SingleFlight()
        # Directories found too large for a one-page listing to answer lookups (see lookup).
        self._large_directories: TTLCache[str, bool] | None = (
            TTLCache(maxsize=max(1, options.list_cache_entries), ttl=options.list_cache_ttl_s)
            if options.list_cache_ttl_s > 0
            else None
        )

    def cache_counters(self) -> dict[str, dict[str, int]]:
        """Hits, misses and entries of the listing and stat caches (for `ossmount status`)."""
        return {
            name: {"hits": cache.hits, "misses": cache.misses, "entries": len(cache)}
            for name, cache in (("listings", self._listings), ("stats", self._stats))
        }

    def _head_client(self) -> OssClient:
        self._head_turn = (self._head_turn + 1) % len(self._head_clients)
        return self._head_clients[self._head_turn]

    # -- directories ---------------------------------------------------------------------

    async def list_directory(self, prefix: str) -> DirSnapshot:
        """A snapshot of the directory ``prefix`` (all pages), from the cache if fresh."""
        cached = self._listings.get(prefix)
        if cached is not None and cached.metadata_complete:
            return cached.snapshot()
        return await self._listing_flights.run(prefix, lambda: self._fetch_listing(prefix))

    async def _fetch_listing(self, prefix: str) -> DirSnapshot:
        objects: list[ObjectSummary] = []
        prefixes: list[str] = []
        token: str | None = None
        while True:
            page = await self.client.list_objects_page(
                self.bucket,
                prefix=prefix,
                delimiter="/",
                continuation_token=token,
                max_keys=self.options.list_page_keys,
            )
            objects.extend(page.objects)
            prefixes.extend(page.prefixes)
            if not page.is_truncated or not page.next_token:
                break
            token = page.next_token
        taken_at = self._clock()
        entries = build_entries(
            prefix,
            objects,
            prefixes,
            self.defaults,
            dir_mtime_ns=self._dir_mtime_ns,
            warn=self.warn_once,
        )
        if self.options.exact_metadata:
            entries = await self._with_exact_metadata(prefix, entries)
        else:
            # No HEADs, but exact attributes already known for the same version cost nothing.
            entries = [self._known_version(prefix, entry) for entry in entries]
        snapshot = DirSnapshot(prefix, tuple(entries), taken_at)
        self._listings.put(DirListing(prefix, entries, taken_at, snapshot=snapshot))
        for entry in entries:
            self._negative.discard(prefix + entry.name)
        return snapshot

    def _known_version(self, prefix: str, entry: DirEntry) -> DirEntry:
        listed = entry.attrs
        if listed.etag is None or listed.kind is Kind.DIR:
            return entry
        known = self._stats.get_for_version(prefix + entry.name, listed)
        return entry if known is None else replace(entry, attrs=known)

    async def _with_exact_metadata(self, prefix: str, entries: list[DirEntry]) -> list[DirEntry]:
        """Replace listing attributes by HEAD results (cached per version), concurrently."""
        persisted: dict[str, Attributes] = {}
        if self.disk_cache is not None:
            persisted = await trio.to_thread.run_sync(self.disk_cache.load_prefix, prefix)
            for entry in entries:
                stored = persisted.get(prefix + entry.name)
                if stored is not None and entry.attrs.kind is not Kind.DIR:
                    self._stats.put(prefix + entry.name, stored)
        results: list[DirEntry | None] = list(entries)
        # A fixed set of workers sharing one iterator, not a task per entry: a directory of a
        # million objects must not create a million coroutines at once.
        work = iter(enumerate(entries))

        async def worker() -> None:
            for position, entry in work:
                results[position] = await self._exact_entry(prefix, entry)

        with first_failure():
            async with trio.open_nursery() as nursery:
                for _ in range(min(self.options.head_concurrency, len(entries))):
                    nursery.start_soon(worker)
        exact = [entry for entry in results if entry is not None]
        if self.disk_cache is not None:
            fresh = [
                (prefix + entry.name, entry.attrs)
                for entry in exact
                if entry.attrs.exact
                and entry.attrs.kind is not Kind.DIR
                and persisted.get(prefix + entry.name) != entry.attrs
            ]
            if fresh:
                await trio.to_thread.run_sync(self.disk_cache.store, fresh)
        return exact

    async def _exact_entry(self, prefix: str, entry: DirEntry) -> DirEntry | None:
        try:
            attrs = await self._exact_attributes(prefix, entry)
        except NotFound:
            return None  # deleted since the listing
        except OssError as exc:
            key = prefix + entry.name
            self.warn_once(key, "HEAD %r failed (%s): showing listing attributes", key, exc)
            return entry
        return replace(entry, attrs=attrs)

    async def _exact_attributes(self, prefix: str, entry: DirEntry) -> Attributes:
        """Exact attributes of a listed entry: from the stat cache (files: for the listed
        version), else a HEAD (a GET for small files); NotFound when it is gone."""
        if entry.attrs.kind is Kind.DIR:
            key = prefix + entry.name + "/"
            cached = self._stats.get_fresh(key)
            if cached is None:
                cached = await self._directory_marker_attributes(key, entry.marker_key)
                self._stats.put(key, cached)
            return cached
        key = prefix + entry.name
        listed = entry.attrs
        assert listed.etag is not None
        cached = self._stats.get_for_version(key, listed)
        if cached is not None:
            return cached
        if listed.kind is Kind.SYMLINK:
            # A HEAD of an OSS symlink describes its target (or fails if it dangles):
            # the link itself is the listing entry plus its target.
            return await self._native_symlink_attributes(key, listed)
        return await self._head(key, listed.size, listed.etag)

    async def _directory_marker_attributes(self, key: str, marker_key: str | None) -> Attributes:
        """A directory's attributes from its marker's metadata, or the defaults."""
        for candidate in (key, marker_key) if marker_key and marker_key != key else (key,):
            try:
                async with self._head_limiter:
                    info = await self._head_client().head_object(self.bucket, candidate)
            except NotFound:
                continue
            return attributes_from_info(info, self.defaults, kind=Kind.DIR)
        return directory_attributes(self.defaults, self._dir_mtime_ns)

    def _gets_whole(self, size: int | None) -> bool:
        """Whether an object of ``size`` bytes (None: unknown) is fetched by GET, not HEAD."""
        threshold = self.options.small_file_get_bytes
        return size is not None and 0 <= size <= threshold and threshold > 0

    async def _head(
        self, key: str, known_size: int | None = None, known_etag: str | None = None
    ) -> Attributes:
        """Exact attributes of the object ``key``, put in the stat cache: a HEAD, or, when
        ``known_size`` (from a listing, or the version seen before) says the object is small,
        a GET, which answers with the same headers plus the body in the same round trip. The
        body goes to ``on_small_body`` under the ETag the GET returned: the headers of that
        answer are the truth, whatever size was known before (the object may have been
        replaced since). Not when the read path holds the body of ``known_etag`` already (the
        data cache after a remount): then a HEAD, which still proves the version."""
        body: bytes | None = None
        get_body = self._gets_whole(known_size) and not (
            known_etag is not None
            and known_size is not None
            and self._holds_body is not None
            and self._holds_body(key, known_etag, known_size)
        )
        async with self._head_limiter:
            client = self._head_client()
            if get_body:
                limit = self.options.small_file_get_bytes
                info, body = await client.get_small_object(self.bucket, key, limit=limit)
            else:
                info = await client.head_object(self.bucket, key)
        attrs = await self._complete_symlink(key, info, body)
        if (
            body is not None
            and self._on_small_body is not None
            and attrs.kind is Kind.FILE
            and info.object_type != "Symlink"  # the body and ETag would be the target's
            and attrs.etag
            and len(body) == attrs.size
        ):
            self._on_small_body(key, attrs.etag, body)
        self._stats.put(key, attrs)
        return attrs

    async def _native_symlink_attributes(self, key: str, listed: Attributes) -> Attributes:
        # GetSymlink describes the link itself: its target and its own x-oss-meta-* (owner,
        # mode, times), which PutSymlink stored.
        async with self._head_limiter:
            info = await self.client.get_symlink_info(self.bucket, key)
        attrs = replace(
            attributes_from_info(info, self.defaults),
            etag=listed.etag,
            last_modified=listed.last_modified,
        )
        self._stats.put(key, attrs)
        return attrs

    async def _complete_symlink(
        self, key: str, info: ObjectInfo, body: bytes | None = None
    ) -> Attributes:
        """Attributes from a HEAD's (or a GET's) headers, with an ossfs symlink's target read
        from ``body`` when the GET brought it, else fetched."""
        if info.object_type == "Symlink":
            # A HEAD followed the link: the link's own attributes come from GetSymlink.
            return attributes_from_info(
                await self.client.get_symlink_info(self.bucket, key), self.defaults
            )
        attrs = attributes_from_info(info, self.defaults)
        if attrs.kind is Kind.SYMLINK and attrs.symlink_target is None:
            if body is not None and len(body) <= SYMLINK_BODY_LIMIT:
                target = body.decode("utf-8", "surrogateescape")
            else:
                target = await self._fetch_symlink_target(key, attrs)
            attrs = replace(attrs, symlink_target=target, size=len(target.encode()))
        return attrs

    # -- single names --------------------------------------------------------------------

    async def lookup(self, parent_prefix: str, name: str) -> Attributes | None:
        """What ``name`` in the directory ``parent_prefix`` is, or None when nothing is there.

        In order: names found missing; the directory's cached listing made by readdir (its
        entries are final: exact, or as readdir_optimize shows them); attributes fetched less
        than the stat TTL ago. Otherwise the directory is listed (one page, once per listing
        TTL, shared by every lookup in it, see :meth:`_lookup_listing`) and the entry found
        there gets its exact attributes (one HEAD, or a GET of a small file, which also brings
        its body for reads), which also proves it still exists. A name that listing does not
        show is probed all the same (the three concurrent requests of :meth:`_probe`), as in
        directories of more than one page: an object another client created since the listing
        must be found at once, and a name is only ever missing for the negative TTL after a
        probe said so.
        """
        key = parent_prefix + name
        if key in self._negative:
            return None
        listing = self._listings.get(parent_prefix)
        if listing is not None and listing.metadata_complete:
            entry = listing.find(name)
            return None if entry is None else entry.attrs
        for cached_key in (key, key + "/"):
            cached = self._stats.get_fresh(cached_key)
            if cached is not None:
                return cached
        if listing is None:
            listing = await self._lookup_listing(parent_prefix)
        if listing is not None:
            entry = listing.find(name)
            if entry is not None and entry.attrs.etag is None and entry.attrs.kind is not Kind.DIR:
                return entry.attrs  # put there by this mount (note_entry), not yet in OSS
            if (
                entry is not None
                and entry.attrs.kind is Kind.DIR
                and not self.options.exact_metadata
            ):
                return entry.attrs  # as readdir_optimize shows directories: no marker HEAD
            if entry is not None:
                found = await self._probe_flights.run(
                    key, lambda: self._listed_attributes(parent_prefix, entry)
                )
                if found is not None:
                    return found
                listing.remove(name)  # gone since the listing: it may be a directory now
        attrs = await self._probe_flights.run(key, lambda: self._probe(key))
        if attrs is None:
            self._negative.add(key)
        return attrs

    async def _listed_attributes(self, prefix: str, entry: DirEntry) -> Attributes | None:
        try:
            return await self._exact_attributes(prefix, entry)
        except NotFound:
            return None

    async def _lookup_listing(self, prefix: str) -> DirListing | None:
        """A listing of the directory ``prefix`` to answer lookups in it: the first page of
        ListObjectsV2 (delimiter "/"), without HEADs, kept in the listing cache; None when the
        directory has more than one page (remembered for the listing TTL, so each lookup
        there probes as before) or listings are not cached.

        Why: with no listing, a lookup costs three requests (HEAD name, HEAD name_$folder$,
        ListObjects name/) and the read after it a GET. Programs read many names of one
        directory (cat *, grep -r, builds), so one listing serves them all: each file costs
        the one HEAD that exact metadata needs, or one GET that also brings the body of a small
        file. The listing sees files, "name/" prefixes and "name_$folder$" markers together, so
        the directory-wins rule holds as in readdir (up to the listing's age: a directory of
        the same name made by another client since then shows once the listing expires).
        """
        if self._large_directories is None or prefix in self._large_directories:
            return None

        async def fetch() -> DirListing | None:
            # start-after the prefix itself: the directory's own "dir/" marker takes no place
            # in the page (a directory of 1,000 names and a marker still fits in one).
            page = await self.client.list_objects_page(
                self.bucket,
                prefix=prefix,
                delimiter="/",
                start_after=prefix,
                max_keys=self.options.list_page_keys,
            )
            if page.is_truncated:
                assert self._large_directories is not None
                self._large_directories[prefix] = True
                return None
            entries = build_entries(
                prefix,
                page.objects,
                page.prefixes,
                self.defaults,
                dir_mtime_ns=self._dir_mtime_ns,
                warn=self.warn_once,
            )
            listing = DirListing(prefix, entries, self._clock(), metadata_complete=False)
            self._listings.put(listing)
            return listing

        return await self._lookup_listing_flights.run(prefix, fetch)

    async def _probe(self, key: str) -> Attributes | None:
        """Find out, with concurrent requests, whether ``key`` is a directory, a file or nothing.

        Three requests in parallel: HEAD key, a one-key listing of "key/" (a directory if
        anything is there; the first key is "key/" itself when a marker exists), and HEAD
        "key_$folder$" (ossfs's marker, which the listing of "key/" cannot see).
        """
        head_info: ObjectInfo | None = None
        folder_info: ObjectInfo | None = None
        first_below: list[str] = []

        async def head_file() -> None:
            nonlocal head_info
            try:
                async with self._head_limiter:
                    head_info = await self._head_client().head_object(self.bucket, key)
            except NotFound as exc:
                if exc.code == "SymlinkTargetNotExist":
                    # A dangling OSS symlink: the link exists, its target does not.
                    head_info = await self.client.get_symlink_info(self.bucket, key)

        async def head_folder_marker() -> None:
            nonlocal folder_info
            try:
                async with self._head_limiter:
                    folder_info = await self._head_client().head_object(
                        self.bucket, key + FOLDER_SUFFIX
                    )
            except NotFound:
                folder_info = None

        async def list_below() -> None:
            page = await self.client.list_objects_page(self.bucket, prefix=key + "/", max_keys=1)
            first_below.extend(summary.key for summary in page.objects)
            first_below.extend(page.prefixes)

        key_bytes = len(key.encode("utf-8", "surrogateescape"))
        with first_failure():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(head_file)
                # (Keys longer than OSS allows cannot exist: a 1,023-byte name is no directory.)
                if key_bytes + len(FOLDER_SUFFIX) <= KEY_MAX:
                    nursery.start_soon(head_folder_marker)
                if key_bytes + 1 <= KEY_MAX:
                    nursery.start_soon(list_below)

        if first_below or folder_info is not None:
            if head_info is not None:
                self.warn_once(
                    key, "object %r is hidden by the directory %r of the same name", key, key + "/"
                )
            dir_key = key + "/"
            if folder_info is not None:
                attrs = attributes_from_info(folder_info, self.defaults, kind=Kind.DIR)
            elif first_below and first_below[0] == dir_key and self.options.exact_metadata:
                attrs = await self._directory_marker_attributes(dir_key, None)
            else:
                attrs = directory_attributes(self.defaults, self._dir_mtime_ns)
            self._stats.put(dir_key, attrs)
            return attrs
        if head_info is None:
            return None
        attrs = await self._complete_symlink(key, head_info)
        self._stats.put(key, attrs)
        return attrs

    async def stat_file(
        self, key: str, read_size: int | None = None, read_etag: str | None = None
    ) -> Attributes | None:
        """Fresh exact attributes of the object ``key`` (a HEAD), or None when it is gone.
        ``read_size``: the caller is about to read the object, last seen at this size: when
        that is small, a GET brings the body with the attributes (see :meth:`_head`)."""
        try:
            return await self._head(key, read_size, read_etag)
        except NotFound as exc:
            if exc.code == "SymlinkTargetNotExist":
                # An OSS symlink to nothing, or to a directory: the link itself is there.
                info = await self.client.get_symlink_info(self.bucket, key)
                attrs = attributes_from_info(info, self.defaults)
                self._stats.put(key, attrs)
                return attrs
            self._stats.invalidate(key)
            return None

    async def _fetch_symlink_target(self, key: str, attrs: Attributes) -> str:
        if attrs.object_type == "Symlink":
            return native_symlink_path(key, await self.client.get_symlink(self.bucket, key))
        if attrs.size > SYMLINK_BODY_LIMIT:
            raise OssError(f"symlink object {key!r} has a {attrs.size}-byte body", code="")
        body = await self.client.get_object(self.bucket, key, if_match=attrs.etag)
        return body.decode("utf-8", "surrogateescape")

    async def read_symlink(self, key: str, attrs: Attributes) -> str:
        """The target of the symlink at ``key`` (OSS native or ossfs style)."""
        if attrs.symlink_target is not None:
            return attrs.symlink_target
        return await self._fetch_symlink_target(key, attrs)

    def invalidate(self, key: str) -> None:
        """Forget what is cached about ``key`` and the listing of its directory."""
        self._stats.invalidate(key)
        self._negative.discard(key.rstrip("/"))
        parent = key.rstrip("/").rpartition("/")[0]
        self._listings.invalidate(parent + "/" if parent else "")

    # -- changes this mount made -----------------------------------------------------------

    def note_entry(self, key: str, attrs: Attributes | None) -> None:
        """A name this mount created, changed (``attrs``) or removed (None).

        Its negative entry goes and its cached stat is replaced (by ``attrs`` when they
        describe an object in OSS, so that the next lookup of the name needs no request);
        the parent's cached listing, if any, is updated in place (O(1)) rather than dropped, so
        that the next lookup in that directory (cp -r asks for every name before creating it)
        is answered without a request.
        """
        if attrs is not None and attrs.etag is not None:
            self._stats.put(key, attrs)
        else:
            self._stats.invalidate(key)
        self._negative.discard(key.rstrip("/"))
        parent, _, name = key.rstrip("/").rpartition("/")
        prefix = parent + "/" if parent else ""
        listing = self._listings.get(prefix)
        if listing is None:
            return
        if attrs is None:
            listing.remove(name)
        else:
            listing.put(DirEntry(name, attrs))
        self._listings.put(listing)

    def cached_listing(self, prefix: str) -> DirListing | None:
        """The complete listing of ``prefix`` if one is cached (no request)."""
        return self._listings.get(prefix)

    def forget_listing(self, prefix: str) -> None:
        """Drop the cached listing of the directory ``prefix`` itself (``invalidate`` drops
        its parent's): after a directory is removed or renamed onto, its old listing must not
        be served."""
        self._listings.invalidate(prefix)

    def forget_tree(self, prefix: str) -> None:
        """Forget everything cached at or below the directory ``prefix`` (ending in "/"):
        listings, HEAD results and names found missing. After a directory rename both the
        old and the new prefix hold other objects than any cache says."""
        self._listings.invalidate_under(prefix)
        self._stats.invalidate_under(prefix)
        self._negative.discard_under(prefix)
        self._negative.discard(prefix.rstrip("/"))

    def note_empty_directory(self, prefix: str) -> None:
        """A directory this mount just made: nothing is under it, so lookups in it need no
        request until the listing expires."""
        self._listings.put(DirListing(prefix, (), self._clock()))
