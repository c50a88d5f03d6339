"""Where studies and teachers are kept: a local folder or an ``s3://bucket/prefix`` URI.

Paths are ``upath.UPath`` objects over fsspec: a local one is a ``pathlib.Path``; an S3 one goes
through ``s3fs``, which reads its endpoint and credentials from the standard AWS variables
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ...), so
MinIO, Ceph and AWS all work, and retries transient errors (botocore's retry config below).

Two guarantees that the teacher store and the study folder rely on, on either kind of storage:
``write_atomic`` writes to a temporary name and then commits it by a rename (a server-side copy on
S3), so no reader ever sees half a file; ``lease`` lets one process at a time do a job (a file lock
locally; on S3 a lease object created only if absent, kept fresh while held, taken over once stale).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from distill_core.errors import UserError, require_writable

if TYPE_CHECKING:
    from upath import UPath

#: The study file inside ``<storage>/<study>/``: its options and MLflow ids (``--resume``, reports).
STUDY_FILE = "distill_study.json"
#: botocore's retries of throttling and transient network errors, on every S3 call.
S3_OPTIONS: dict[str, Any] = {"config_kwargs": {"retries": {"max_attempts": 8, "mode": "standard"}}}
#: A lease not refreshed for this long belongs to a dead process and is taken over.
LEASE_TTL_S = 60.0
_LEASE_POLL_S = 1.0


def location(url: str | os.PathLike[str] | UPath) -> UPath:
    """``url`` as a path: a local folder (absolute) or an ``s3://`` URI."""
    from upath import UPath  # fsspec's loggers appear when a store is used, not on import

    if isinstance(url, UPath) and not is_local(url):
        return url
    text = os.fspath(url)
    if "://" not in text or text.startswith("file://"):
        return UPath(Path(text.removeprefix("file://")).expanduser().resolve())
    if not text.startswith("s3://"):
        scheme = text.split("://", 1)[0]
        raise UserError(
            f"unsupported storage {text!r} ({scheme}://); pass a folder or s3://BUCKET/PREFIX"
        )
    try:
        import s3fs  # noqa: F401
    except ImportError:
        raise UserError(
            f"--storage {text} needs s3fs; install it with pip install 'distill-study[s3]'"
        ) from None
    return UPath(text.rstrip("/"), **S3_OPTIONS)


def is_local(path: UPath) -> bool:
    return path.protocol in ("", "file", "local")


def write_atomic(path: UPath, blob: bytes) -> None:
    """Write ``blob`` to a temporary name beside ``path``, then rename it to ``path``: a reader (or
    a crash) never sees half a file. A local ``path``'s folder must exist."""
    if is_local(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(blob)
        tmp.rename(path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_tree(path: UPath) -> None:
    """Delete ``path`` and everything under it, if present."""
    if path.exists():
        path.fs.rm(path.path, recursive=True)


@contextmanager
def lease(path: UPath) -> Iterator[None]:
    """Hold the lease on ``path`` (beside it: ``<path>.lock`` or ``<path>.lease``) while the block runs.

    Raises:
        OSError: the storage cannot be written.
    """
    if is_local(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(f"{path}.lock"):
            yield
        return
    marker = path.with_name(f"{path.name}.lease")
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    while not _take(marker, holder):
        time.sleep(_LEASE_POLL_S)
    stop = threading.Event()
    beat = threading.Thread(target=_refresh, args=(marker, holder, stop), daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        marker.unlink(missing_ok=True)


def _stamp(holder: str) -> bytes:
    return json.dumps({"holder": holder, "time": time.time()}).encode()


def _take(marker: UPath, holder: str) -> bool:
    """Create the lease object unless it exists (S3's If-None-Match); remove it when stale."""
    try:
        marker.fs.pipe_file(marker.path, _stamp(holder), mode="create")
        return True
    except FileExistsError:
        pass
    try:
        age = time.time() - json.loads(marker.read_bytes())["time"]
    except (FileNotFoundError, ValueError, KeyError):
        return False  # released meanwhile, or being written: try again
    if age > LEASE_TTL_S:
        marker.unlink(missing_ok=True)
    return False


def _refresh(marker: UPath, holder: str, stop: threading.Event) -> None:
    while not stop.wait(LEASE_TTL_S / 4):
        marker.write_bytes(_stamp(holder))


def copy_into(files: list[Path], folder: UPath) -> None:
    """Copy local ``files`` into ``folder``, each committed whole (``write_atomic``)."""
    if is_local(folder):
        folder.mkdir(parents=True, exist_ok=True)
    for file in files:
        write_atomic(folder / file.name, file.read_bytes())


def read_study_record(storage: str, name: str) -> dict[str, Any]:
    """The study file of study ``name`` under ``storage``.

    Raises:
        UserError: no such study there.
    """
    path = location(storage) / name / STUDY_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        raise UserError(
            f"no study {name!r} in --storage {storage} (no {path}); pass the --storage it ran with"
        ) from None


def check_writable(url: str, fix: str) -> None:
    """Raise ``UserError`` (one line: what and how to fix it) unless ``url`` can be written.

    A local folder is checked without creating anything; an S3 prefix by writing and deleting a
    small object, with a short timeout and no retries, so that a wrong bucket, refused credentials
    and an unreachable endpoint are told apart at once.
    """
    if "://" not in url or url.startswith("file://"):
        require_writable(url.removeprefix("file://"), fix)
        return
    from upath import UPath

    path = location(url)
    fast = {"config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 3}}
    probe = UPath(str(path), skip_instance_cache=True, **fast) / f".check-{uuid.uuid4().hex}"
    bucket = path.path.split("/", 1)[0]
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or "AWS"
    try:
        probe.write_bytes(b"")
        probe.unlink(missing_ok=True)
    except FileNotFoundError:
        raise UserError(
            f"S3 bucket {bucket!r} of --storage {url} does not exist at {endpoint}; create it "
            f"(aws s3 mb s3://{bucket}) or fix the bucket name in --storage"
        ) from None
    except PermissionError as exc:
        raise UserError(
            f"S3 at {endpoint} refused the credentials for --storage {url} ({_first_line(exc)}); set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) to a key that may write there"
        ) from None
    except Exception as exc:  # botocore/aiohttp connection errors have no common base class
        raise UserError(
            f"cannot reach the S3 endpoint {endpoint} for --storage {url} ({_first_line(exc)}); "
            "check AWS_ENDPOINT_URL (unset it for AWS) and that the server is up"
        ) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:160] if lines else ''}"
