"""Storage through fsspec: local paths and s3:// alike, with atomic writes.

A write goes to a temporary name first and is moved into place only once complete (a
local rename, or for object stores an upload that finishes before the final key exists),
so a crash never leaves a half-written artifact that looks whole.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

import fsspec
import pandas as pd

from prefcurate.errors import StorageError, first_line

# Errors no retry can fix: what is missing, forbidden or full stays so.
PERMANENT_ERRNOS = frozenset({errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS,
                              errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG})
TRANSIENT_WORDS = ("timeout", "timed out", "connection", "throttl", "slowdown", "slow down", "serviceunavailable",
                   "service unavailable", "internalerror", "503", "502", "500", "504", "temporarily")


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the operation that raised `exc` may succeed (network, throttling, 5xx, timeouts)."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, OSError) and exc.errno in PERMANENT_ERRNOS:
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    text = f"{type(exc).__name__} {exc}".lower()
    return any(word in text for word in TRANSIENT_WORDS)


def storage_error(what: str, uri: str, exc: BaseException) -> StorageError:
    """A one-line StorageError for `what` failing on `uri`, marked transient or not."""
    transient = is_transient(exc)
    hint = "; retrying may help" if transient else ""
    return StorageError(f"cannot {what} {uri}: {first_line(exc)}{hint}", transient=transient)


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `uri` and the path inside it."""
    fs, path = fsspec.core.url_to_fs(str(uri))
    return fs, path


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or URL without losing the scheme."""
    out = str(uri).rstrip("/")
    for part in parts:
        out = f"{out}/{str(part).strip('/')}"
    return out


def redact_uri(uri: str) -> str:
    """`uri` without a user:password part, for anything that is printed or logged."""
    if "://" not in uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    try:
        return fs.exists(path)
    except Exception as exc:  # network or credential failure
        raise storage_error("reach", uri, exc) from exc


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError as exc:
        raise StorageError(f"{uri} does not exist; check the path") from exc
    except Exception as exc:
        raise storage_error("read", uri, exc) from exc


def write_bytes(uri: str, data: bytes) -> str:
    """Write `data` to `uri` atomically; returns `uri`. A failed write leaves nothing behind.

    On an object store the bucket must exist: it is never created as a side effect.
    """
    fs, path = filesystem(uri)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    tmp = None
    try:
        if is_remote(uri):
            _require_bucket(fs, path, uri)
            # An object store PUT is atomic: the key appears only once the upload completes.
            fs.pipe_file(path, data)
        else:
            if parent:
                fs.makedirs(parent, exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            tmp = None
    except StorageError:
        raise
    except Exception as exc:
        raise storage_error("write", uri, exc) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return uri


_KNOWN_BUCKETS: set[str] = set()


def require_bucket(uri: str) -> None:
    """The bucket of a remote `uri` exists (a StorageError otherwise; nothing is created)."""
    fs, path = filesystem(uri)
    _require_bucket(fs, path, uri)


def _require_bucket(fs: fsspec.AbstractFileSystem, path: str, uri: str) -> None:
    bucket = path.split("/", 1)[0]
    if bucket in _KNOWN_BUCKETS:
        return
    try:
        found = fs.exists(bucket)
    except Exception as exc:
        raise storage_error("reach", uri, exc) from exc
    if not found:
        raise StorageError(f"bucket {bucket} of {uri} does not exist; create it first (prefcurate never creates buckets)")
    _KNOWN_BUCKETS.add(bucket)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> str:
    return write_bytes(uri, text.encode("utf-8"))


def read_json(uri: str) -> Any:
    return json.loads(read_text(uri))


def write_json(uri: str, obj: Any) -> str:
    return write_text(uri, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_parquet(uri: str) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(read_bytes(uri)))


def write_parquet(uri: str, frame: pd.DataFrame) -> str:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return write_bytes(uri, buf.getvalue())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """A stable digest of a JSON-able object (keys sorted), used for config and content ids."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode())


def _listing(fs: fsspec.AbstractFileSystem, path: str, uri: str) -> list[tuple[str, Any, Any]]:
    """(relative name, size, etag or mtime) of every file under a remote prefix."""
    root = path.rstrip("/")
    try:
        fs.invalidate_cache(root)  # another process may have rewritten the prefix
        found = fs.find(root, detail=True)
    except FileNotFoundError as exc:
        raise StorageError(f"{uri} does not exist; check the bucket and prefix") from exc
    except Exception as exc:
        raise storage_error("list", uri, exc) from exc
    if not found:
        raise StorageError(f"{uri} does not exist or is empty; check the bucket and prefix")
    return sorted(
        (name[len(root) + 1 :], info.get("size"), info.get("ETag") or info.get("mtime") or info.get("LastModified"))
        for name, info in found.items()
    )


@contextmanager
def local_copy_dir(uri: str, cache_dir: str | os.PathLike) -> Iterator[Path]:
    """A local directory holding the files under `uri`, downloaded once into `cache_dir`.

    The cache entry is keyed by the URI *and* the remote listing (names, sizes, etags), so a
    prefix that was overwritten since is downloaded again rather than served stale.
    """
    if not is_remote(uri):
        yield Path(str(uri).removeprefix("file://"))
        return
    fs, path = filesystem(uri)
    listing = _listing(fs, path, uri)
    target = Path(cache_dir) / sha256_json([str(uri), listing])[:16]
    done = target / ".complete"
    if not done.exists():
        tmp = target.with_name(target.name + f".tmp-{uuid.uuid4().hex}")
        try:
            for name, _, _ in listing:
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(f"{path.rstrip('/')}/{name}", str(tmp / name))
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise storage_error("download", uri, exc) from exc
        (tmp / ".complete").touch()
        if target.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    yield target


def upload_dir(local: str | os.PathLike, uri: str) -> str:
    """Copy a local directory to `uri` (local or remote), files first, so readers see whole files."""
    local = Path(local)
    for file in sorted(p for p in local.rglob("*") if p.is_file()):
        write_bytes(join(uri, file.relative_to(local).as_posix()), file.read_bytes())
    return uri
