"""Where the access key comes from: options, environment, ossfs passwd files, or nowhere.

The order, as in ossfs/s3fs, first found wins:

1. the ``passwd_file`` option (a file named on the command line or in -o);
2. the environment: ``OSS_ACCESS_KEY_ID`` and ``OSS_ACCESS_KEY_SECRET`` (and ``OSS_SESSION_TOKEN``
   for an STS key);
3. ``~/.passwd-ossfs``;
4. ``/etc/passwd-ossfs``;
5. anonymous access (public buckets), if the caller allows it.

A passwd file holds ``AK:SK`` lines (a default key) and ``bucket:AK:SK`` lines (a key for one
bucket, preferred over the default); ``#`` comments and blank lines are ignored. A file that
others can read is refused, and so is a personal file that its group can read (the system-wide
``/etc/passwd-ossfs`` may be group-readable, as ossfs documents ``chmod 640``).

Secrets never appear in messages: errors name the file and the line number only.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from ossmount.oss.signer import Credentials

log = logging.getLogger(__name__)

ENV_ACCESS_KEY_ID = "OSS_ACCESS_KEY_ID"
ENV_ACCESS_KEY_SECRET = "OSS_ACCESS_KEY_SECRET"  # noqa: S105 (a variable name, not a secret)
ENV_SESSION_TOKEN = "OSS_SESSION_TOKEN"  # noqa: S105
USER_PASSWD_FILE = ".passwd-ossfs"  # noqa: S105 (a file name)
SYSTEM_PASSWD_FILE = Path("/etc/passwd-ossfs")


class CredentialsError(Exception):
    """Credentials were looked for and found unusable (bad file, unsafe permissions, ...)."""


def from_environment(environ: Mapping[str, str] | None = None) -> Credentials | None:
    """The key in OSS_ACCESS_KEY_ID / OSS_ACCESS_KEY_SECRET (/ OSS_SESSION_TOKEN), if set."""
    env = os.environ if environ is None else environ
    access_key_id = env.get(ENV_ACCESS_KEY_ID, "").strip()
    secret = env.get(ENV_ACCESS_KEY_SECRET, "").strip()
    if not access_key_id and not secret:
        return None
    if not access_key_id or not secret:
        missing = ENV_ACCESS_KEY_SECRET if access_key_id else ENV_ACCESS_KEY_ID
        raise CredentialsError(f"{missing} is not set (the other half of the key is)")
    token = env.get(ENV_SESSION_TOKEN, "").strip() or None
    return Credentials(access_key_id, secret, token)


def check_permissions(path: Path, *, allow_group: bool = False) -> None:
    """Refuse a passwd file that others (or, unless allowed, its group) can read or write."""
    mode = stat.S_IMODE(path.stat().st_mode)
    forbidden = 0o007 if allow_group else 0o077
    if mode & forbidden:
        who = "others" if allow_group or mode & 0o007 else "group"
        fix = "640" if allow_group else "600"
        raise CredentialsError(
            f"{path}: permissions {mode:04o} let {who} read it; a passwd file holds a secret "
            f"key, so ossmount refuses it (chmod {fix} {path})"
        )


def read_passwd_file(
    path: Path, bucket: str | None, *, allow_group: bool = False
) -> Credentials | None:
    """The key for ``bucket`` in an ossfs passwd file (a ``bucket:AK:SK`` line, else the default
    ``AK:SK`` line), or None if the file has neither."""
    check_permissions(path, allow_group=allow_group)
    default: Credentials | None = None
    for number, raw_line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) == 2 and all(fields):
            if default is None:
                default = Credentials(fields[0], fields[1])
        elif len(fields) == 3 and all(fields):
            if bucket is not None and fields[0] == bucket:
                return Credentials(fields[1], fields[2])
        else:
            raise CredentialsError(
                f"{path}, line {number}: expected AK:SK or bucket:AK:SK (line content not shown)"
            )
    return default


def places_searched(*, home: Path | None = None, system_file: Path = SYSTEM_PASSWD_FILE) -> str:
    """Where :func:`resolve_credentials` looks when given no passwd file, for messages."""
    user_file = (home if home is not None else Path.home()) / USER_PASSWD_FILE
    return (
        f"{ENV_ACCESS_KEY_ID}/{ENV_ACCESS_KEY_SECRET} in the environment, {user_file}, "
        f"{system_file}"
    )


def resolve_credentials(
    bucket: str | None,
    *,
    passwd_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
    system_file: Path = SYSTEM_PASSWD_FILE,
    allow_anonymous: bool = True,
) -> Credentials | None:
    """Find the key for ``bucket`` in the documented order; None means anonymous access."""
    if passwd_file is not None:
        if not passwd_file.exists():
            raise CredentialsError(f"{passwd_file}: passwd file not found")
        found = read_passwd_file(passwd_file, bucket)
        if found is None:
            raise CredentialsError(f"{passwd_file}: no key for bucket {bucket!r} and no default")
        log.debug("credentials from %s", passwd_file)
        return found
    found = from_environment(environ)
    if found is not None:
        log.debug("credentials from the environment")
        return found
    user_file = (home if home is not None else Path.home()) / USER_PASSWD_FILE
    for candidate, allow_group in ((user_file, False), (system_file, True)):
        if candidate.exists():
            found = read_passwd_file(candidate, bucket, allow_group=allow_group)
            if found is not None:
                log.debug("credentials from %s", candidate)
                return found
    if not allow_anonymous:
        raise CredentialsError(
            f"no credentials: set {ENV_ACCESS_KEY_ID} and {ENV_ACCESS_KEY_SECRET}, or write "
            f"~/{USER_PASSWD_FILE} (AK:SK, chmod 600)"
        )
    log.debug("no credentials found: anonymous access")
    return None
