"""Where files live: a local path or an object-storage URI (`s3://bucket/prefix`), through pyarrow's filesystems.

Every dataset, run directory and trainer/evaluator Parquet file is reached through this module, so one place
decides how a location becomes a filesystem, how a file is committed whole, and what an unreachable endpoint,
a missing bucket or absent credentials look like to the user: one line (`StorageError`), never a traceback.

- Local paths behave as they always did: a commit is a temp file + rename (atomic on POSIX).
- On `s3://` a commit is one upload of a buffer built in memory (a single PUT; past pyarrow's part size a
  multipart upload, which S3 also shows only once complete): an object appears whole or not at all, and S3
  has no rename. Directories are prefixes; "what is committed" comes from listings.
- Endpoint and credentials come from the standard AWS variables (`AWS_ENDPOINT_URL[_S3]`, `AWS_REGION`,
  `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, web identity, container credentials; instance
  metadata only when `AWS_EC2_METADATA_DISABLED=false` says so). Nothing secret is passed to pyarrow or kept
  in a config, so a pickled filesystem (sent to Ray workers) carries none, and each worker reads its own
  environment.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import pyarrow.fs as pafs
from pydantic import BeforeValidator

from grainclip.config.base import ConfigError

#: The variables the S3 filesystem is built from (a change in any of them builds a new one).
S3_VARIABLES = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_EC2_METADATA_DISABLED",
)


class StorageError(ConfigError):
    """A storage location cannot be used as configured: unreachable endpoint, no such bucket, no credentials."""


def is_uri(path: str | os.PathLike) -> bool:
    """An object-storage location (`s3://...`), not a local path."""
    return "://" in os.fspath(path)


def location(path: str | os.PathLike) -> Path | str:
    """A config's path as a location: a `Path` when local, the URI string otherwise (pathlib would collapse the
    `//` of `s3://`)."""
    return os.fspath(path) if is_uri(path) else Path(path)


def absolute(path: Path | str) -> Path | str:
    """A local path made absolute (workers do not share the driver's working directory); URIs as they are."""
    return path if is_uri(path) else Path(path).resolve()


#: A config field holding a location: a `Path` when local, the URI string otherwise.
Location = Annotated[Path | str, BeforeValidator(location)]


def join(base: Path | str, *parts: str) -> Path | str:
    """`base/part/...`: a `Path` under a local base, a URI under a URI."""
    if not is_uri(base):
        return Path(base, *parts)
    return "/".join([os.fspath(base).rstrip("/"), *(p.strip("/") for p in parts if p)])


def name(path: str | os.PathLike) -> str:
    """The last component of a path or URI."""
    return os.fspath(path).rstrip("/").rsplit("/", 1)[-1]


def resolve(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding `path` and the path inside it (`bucket/key` for S3)."""
    path = os.fspath(path)
    if not is_uri(path):
        return pafs.LocalFileSystem(), str(Path(path).absolute())
    scheme, _, rest = path.partition("://")
    if scheme == "s3":
        return s3_filesystem(), rest.rstrip("/")
    with _translated(path):
        return pafs.FileSystem.from_uri(path)


def resolve_all(paths: Sequence[str | os.PathLike]) -> tuple[pafs.FileSystem, list[str]]:
    """One filesystem for several paths and the paths inside it (for readers that take a single filesystem)."""
    resolved = [resolve(path) for path in paths]
    filesystems = {type(filesystem).__name__ for filesystem, _ in resolved}
    if len(filesystems) > 1:
        raise ConfigError(f"paths on different storage cannot be read together: {', '.join(map(str, paths))}")
    return resolved[0][0], [inner for _, inner in resolved]


def s3_filesystem() -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem for the current AWS variables (one per distinct setting, reused)."""
    return _s3_for(tuple((key, os.environ.get(key)) for key in S3_VARIABLES))


@functools.lru_cache(maxsize=8)
def _s3_for(settings: tuple[tuple[str, str | None], ...]) -> pafs.S3FileSystem:
    env = {key: value for key, value in settings if value}
    if not _has_credentials(env):
        raise StorageError(
            "no AWS credentials for s3://: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, a web "
            "identity token, or AWS_EC2_METADATA_DISABLED=false to use the instance role)"
        )
    options: dict = {"region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=parts.netloc + parts.path.rstrip("/"), scheme=parts.scheme)
    # Short timeouts and few retries: a wrong endpoint should fail in seconds with one line, not hang.
    return pafs.S3FileSystem(
        connect_timeout=5,
        request_timeout=60,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3),
        **options,
    )


def _has_credentials(env: dict[str, str]) -> bool:
    """Whether any standard AWS credential source is configured (the SDK itself resolves which one)."""
    shared = Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials")
    return bool(
        (env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"))
        or env.get("AWS_PROFILE")
        or shared.is_file()
        or env.get("AWS_WEB_IDENTITY_TOKEN_FILE")
        or env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        or env.get("AWS_EC2_METADATA_DISABLED", "").lower() == "false"
    )


def endpoint() -> str:
    """The S3 endpoint in use, for messages (AWS's own when no AWS_ENDPOINT_URL is set)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS (default endpoint)"


@contextlib.contextmanager
def _translated(path: str) -> Iterator[None]:
    """Turn the AWS SDK's multi-line errors into one StorageError line that says what to fix."""
    try:
        yield
    except (FileNotFoundError, StorageError):
        raise
    except OSError as exc:
        text = str(exc)
        bucket = path.partition("://")[2].split("/", 1)[0]
        if "NETWORK_CONNECTION" in text or "Couldn't connect" in text or "curlCode" in text:
            reason = f"cannot reach the S3 endpoint {endpoint()} (check AWS_ENDPOINT_URL)"
        elif "NO_SUCH_BUCKET" in text or "Bucket" in text and "not found" in text or "NoSuchBucket" in text:
            reason = f"bucket {bucket!r} does not exist at {endpoint()}"
        elif "ACCESS_DENIED" in text or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
            reason = "access denied (check the AWS credentials and the bucket's permissions)"
        else:
            reason = text.splitlines()[0] if text else type(exc).__name__
        raise StorageError(f"{path}: {reason}") from None


def _info(path: str) -> pafs.FileInfo:
    filesystem, inner = resolve(path)
    with _translated(path):
        return filesystem.get_file_info(inner)


def exists(path: str | os.PathLike) -> bool:
    return _info(os.fspath(path)).type != pafs.FileType.NotFound


def is_file(path: str | os.PathLike) -> bool:
    return _info(os.fspath(path)).type == pafs.FileType.File


def is_dir(path: str | os.PathLike) -> bool:
    """A folder, or on S3 a prefix that has objects under it (or a bucket)."""
    return _info(os.fspath(path)).type == pafs.FileType.Directory


def list_files(path: str | os.PathLike, suffix: str = "", recursive: bool = True) -> list[Path | str]:
    """Files under a folder or prefix ending in `suffix`, sorted, as locations (`Path`s or URIs); [] when absent.

    Hidden and temporary entries (a component starting with `.` or `_`) are left out.
    """
    path = os.fspath(path)
    filesystem, inner = resolve(path)
    with _translated(path):
        infos = filesystem.get_file_info(pafs.FileSelector(inner, allow_not_found=True, recursive=recursive))
    found = []
    for info in infos:
        relative = info.path[len(inner) :].lstrip("/")
        if info.type != pafs.FileType.File or not relative.endswith(suffix):
            continue
        if any(part.startswith((".", "_")) for part in relative.split("/")):
            continue
        found.append(join(location(path), relative))
    return sorted(found)


def list_dirs(path: str | os.PathLike) -> list[str]:
    """Names of the folders (prefixes) directly under `path`, sorted; [] when absent."""
    path = os.fspath(path)
    filesystem, inner = resolve(path)
    with _translated(path):
        infos = filesystem.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    return sorted(name(info.path) for info in infos if info.type == pafs.FileType.Directory)


def read_bytes(path: str | os.PathLike) -> bytes:
    path = os.fspath(path)
    filesystem, inner = resolve(path)
    with _translated(path), filesystem.open_input_stream(inner) as stream:
        return stream.read()


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode()


def open_input_file(path: str | os.PathLike) -> pafs.NativeFile:
    """A random-access handle (for Parquet footers and row groups); the caller closes it."""
    path = os.fspath(path)
    filesystem, inner = resolve(path)
    with _translated(path):
        return filesystem.open_input_file(inner)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Commit `data` as the file at `path`, whole or not at all: one PUT on S3, temp file + rename locally."""
    path = os.fspath(path)
    if not is_uri(path):
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return
    filesystem, inner = resolve(path)
    with _translated(path), filesystem.open_output_stream(inner) as stream:
        stream.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def delete(path: str | os.PathLike) -> None:
    """Remove a file; nothing happens when it is already gone."""
    path = os.fspath(path)
    filesystem, inner = resolve(path)
    with _translated(path), contextlib.suppress(FileNotFoundError):
        filesystem.delete_file(inner)


def move(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move a file or folder; on S3 every object is copied and then deleted (there is no rename)."""
    source, target = os.fspath(source), os.fspath(target)
    if not is_uri(source):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(source, target)
        return
    filesystem, inner = resolve(source)
    _, inner_target = resolve(target)
    with _translated(source):
        if filesystem.get_file_info(inner).type == pafs.FileType.File:
            filesystem.copy_file(inner, inner_target)
            filesystem.delete_file(inner)
            return
        for info in filesystem.get_file_info(pafs.FileSelector(inner, recursive=True)):
            if info.type == pafs.FileType.File:
                filesystem.copy_file(info.path, inner_target + info.path[len(inner) :])
                filesystem.delete_file(info.path)


def check_bucket(path: str | os.PathLike) -> None:
    """StorageError (one line) unless the bucket of an `s3://` location exists and answers; local: nothing."""
    path = os.fspath(path)
    if not path.startswith("s3://"):
        return
    bucket = path[len("s3://") :].split("/", 1)[0]
    if _info(f"s3://{bucket}").type != pafs.FileType.Directory:
        raise StorageError(f"{path}: bucket {bucket!r} does not exist at {endpoint()}")
