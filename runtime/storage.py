"""Local and S3 paths behind one interface (pyarrow filesystems), with atomic publication.

S3 credentials come from the usual AWS chain (environment, profile, instance role); an
endpoint for S3-compatible servers comes from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``.
Nothing here logs credentials.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def s3_filesystem() -> pafs.S3FileSystem:
    endpoint = s3_endpoint()
    kwargs: dict = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs)


@dataclass(frozen=True)
class Location:
    """A filesystem and a path on it, from a local path, ``file://`` URI or ``s3://`` URI."""

    fs: pafs.FileSystem
    path: str  # no trailing slash; for S3, "bucket/prefix"
    uri: str  # as the user would write it back

    def join(self, *parts: str) -> Location:
        path = "/".join([self.path.rstrip("/"), *parts])
        uri = "/".join([self.uri.rstrip("/"), *parts])
        return Location(self.fs, path, uri)

    @property
    def is_s3(self) -> bool:
        return is_s3(self.uri)


def locate(uri: str) -> Location:
    """Raises ValueError for an empty path (``os.path.abspath`` would make it the current
    folder: a job or report would write there) and an ``s3://`` URI without a bucket."""
    if not uri.strip():
        raise ValueError("an empty path: give a local path or an s3:// URI")
    if is_s3(uri):
        if not uri[len("s3://") :].strip("/"):
            raise ValueError(f"{uri!r}: an s3:// URI needs a bucket (s3://bucket/prefix)")
        return Location(s3_filesystem(), uri[len("s3://") :].rstrip("/"), uri.rstrip("/"))
    if uri.startswith("file://"):
        uri = urlparse(uri).path
    path = os.path.abspath(uri)
    return Location(pafs.LocalFileSystem(), path, path)


def exists(loc: Location) -> bool:
    return loc.fs.get_file_info(loc.path).type != pafs.FileType.NotFound


def list_files(loc: Location, suffix: str = "") -> list[Location]:
    """Files directly under ``loc`` whose names end with ``suffix``, sorted by name."""
    try:
        infos = loc.fs.get_file_info(pafs.FileSelector(loc.path, allow_not_found=True))
    except FileNotFoundError:
        return []
    names = sorted(
        info.base_name
        for info in infos
        if info.type == pafs.FileType.File and info.base_name.endswith(suffix)
    )
    return [loc.join(name) for name in names]


def read_bytes(loc: Location) -> bytes:
    with loc.fs.open_input_stream(loc.path) as stream:
        return stream.read()


def write_bytes_atomic(loc: Location, data: bytes) -> None:
    """Publish ``data`` at ``loc`` so that no reader ever sees a partial file.

    Locally: write a hidden temporary sibling, fsync, rename. On S3 a PUT (or a multipart
    upload) only becomes visible once complete, so the object is written in place.
    """
    if loc.is_s3:
        with loc.fs.open_output_stream(loc.path) as out:
            out.write(data)
        return
    directory, name = os.path.split(loc.path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, loc.path)


def publish_file_atomic(local_path: str, loc: Location) -> None:
    """Move a finished local file to ``loc`` atomically (upload for S3, rename locally)."""
    if loc.is_s3:
        pafs.copy_files(
            local_path,
            loc.path,
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=loc.fs,
        )
        os.remove(local_path)
        return
    directory, name = os.path.split(loc.path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
    shutil.move(local_path, tmp)  # a rename on the same device, a copy otherwise
    os.replace(tmp, loc.path)


def delete(loc: Location) -> None:
    with contextlib.suppress(FileNotFoundError):
        loc.fs.delete_file(loc.path)
