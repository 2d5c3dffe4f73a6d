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
  metadata only when `AWS_EC2_METADATA_DISABLED=false` says so), or from the variables a run config's `storage`
  names (`StorageConfig`: names only, never values). `configured(config.storage)` puts those names (not their
  values) in `GRAINCLIP_STORAGE_VARIABLES`, so the processes a run starts (Ray workers, data-loader workers) read
  the same variables from their own environment. The values reach pyarrow only in the process that read them: a
  filesystem pickled for a Ray worker carries no key, it is rebuilt there from that worker's environment
  (`_S3FileSystem.__reduce__`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs
from pydantic import BeforeValidator, ValidationError

from grainclip.config.base import ConfigError
from grainclip.config.storage import StorageConfig

#: The standard AWS variables behind each `StorageConfig` field (the first one set wins), used when a field is unset.
STANDARD_VARIABLES: dict[str, tuple[str, ...]] = {
    "endpoint_url_env": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "region_env": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "access_key_id_env": ("AWS_ACCESS_KEY_ID",),
    "secret_access_key_env": ("AWS_SECRET_ACCESS_KEY",),
    "session_token_env": ("AWS_SESSION_TOKEN",),
}
#: The other credential sources the AWS SDK resolves itself (a change in any of them builds a new filesystem).
SDK_VARIABLES = (
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_EC2_METADATA_DISABLED",
)
#: Carries a run's `StorageConfig` variable names (JSON, never values) to the processes the run starts.
NAMES_VARIABLE = "GRAINCLIP_STORAGE_VARIABLES"


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


@contextlib.contextmanager
def configured(config: StorageConfig) -> Iterator[None]:
    """Within the block, `s3://` uses the variables `config` names, in this process and in those it starts.

    The names (never the values) go into `NAMES_VARIABLE`, which child processes inherit and `ray_runtime_env`
    hands to the workers of an attached cluster. A config that names nothing leaves the setting in effect as it
    is (a train step inside a pipeline run keeps the run's). Restored on exit.
    """
    names = config.named()
    saved = os.environ.get(NAMES_VARIABLE)
    if names:
        os.environ[NAMES_VARIABLE] = json.dumps(names, sort_keys=True)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(NAMES_VARIABLE, None)
        else:
            os.environ[NAMES_VARIABLE] = saved


def ray_runtime_env() -> dict[str, Any] | None:
    """The runtime_env that gives an attached cluster's workers the configured variable names (None: none are).

    Only for attaching: an embedded Ray's workers inherit the environment, and a runtime_env costs each new worker
    a round trip to Ray's runtime-env agent (measured: ~2-4 s more before a fresh Ray's first tasks run)."""
    names = os.environ.get(NAMES_VARIABLE)
    return {"env_vars": {NAMES_VARIABLE: names}} if names else None


def configured_names() -> dict[str, str]:
    """{StorageConfig field: variable name} in effect in this process ({}: the standard AWS variables)."""
    text = os.environ.get(NAMES_VARIABLE)
    if not text:
        return {}
    try:
        return StorageConfig.model_validate(json.loads(text)).named()
    except (ValueError, ValidationError):
        raise StorageError(
            f"{NAMES_VARIABLE} must be a storage config's variable names as JSON (e.g. "
            '{"secret_access_key_env": "MY_S3_SECRET"}), as grainclip sets it for the processes a run starts'
        ) from None


def _settings() -> dict[str, str]:
    """{StorageConfig field: value} for the fields that have one: the named variable, else the standard ones.

    A variable the config names but the environment lacks is an error naming the variable, never a fallback.
    """
    names = configured_names()
    settings = {}
    for field, standard in STANDARD_VARIABLES.items():
        if field in names:
            value = os.environ.get(names[field])
            if not value:
                raise StorageError(
                    f"storage.{field} names the environment variable {names[field]}, which is not set here (set "
                    "it wherever the run reads or writes s3://: the driver and every Ray node)"
                )
        else:
            value = next((os.environ[key] for key in standard if os.environ.get(key)), None)
        if value:
            settings[field] = value
    return settings


def s3_filesystem() -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem for the current settings (one per distinct setting, reused)."""
    settings = _settings()
    sdk = {key: os.environ[key] for key in SDK_VARIABLES if os.environ.get(key)}
    return _s3_for(tuple(sorted(settings.items())), tuple(sorted(sdk.items())))


class _S3FileSystem(pafs.S3FileSystem):
    """An S3FileSystem that pickles as "build it again here": a Ray worker gets no key, it reads its own variables."""

    def __reduce__(self):
        return s3_filesystem, ()


@functools.lru_cache(maxsize=8)
def _s3_for(settings: tuple[tuple[str, str], ...], sdk: tuple[tuple[str, str], ...]) -> pafs.S3FileSystem:
    """The filesystem for these settings: a key pair found is passed to pyarrow; without one the AWS SDK finds
    the credentials itself (profile, web identity, container or instance role)."""
    values, env = dict(settings), dict(sdk)
    if not _has_credentials(values, env):
        raise StorageError(
            "no AWS credentials for s3://: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, a web "
            "identity token, AWS_EC2_METADATA_DISABLED=false to use the instance role, or name the variables in "
            "the config's storage section)"
        )
    options: dict[str, Any] = {"region": values.get("region_env") or "us-east-1"}
    if "access_key_id_env" in values and "secret_access_key_env" in values:
        options.update(access_key=values["access_key_id_env"], secret_key=values["secret_access_key_env"])
        if "session_token_env" in values:
            options["session_token"] = values["session_token_env"]
    endpoint = values.get("endpoint_url_env")
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=parts.netloc + parts.path.rstrip("/"), scheme=parts.scheme)
    # Short timeouts and few retries: a wrong endpoint should fail in seconds with one line, not hang.
    return _S3FileSystem(
        connect_timeout=5,
        request_timeout=60,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3),
        **options,
    )


def _has_credentials(values: dict[str, str], env: dict[str, str]) -> bool:
    """Whether any standard AWS credential source is configured (the SDK itself resolves which one)."""
    shared = Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials")
    return bool(
        (values.get("access_key_id_env") and values.get("secret_access_key_env"))
        or env.get("AWS_PROFILE")
        or shared.is_file()
        or env.get("AWS_WEB_IDENTITY_TOKEN_FILE")
        or env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        or env.get("AWS_EC2_METADATA_DISABLED", "").lower() == "false"
    )


def endpoint() -> str:
    """The S3 endpoint in use, for messages (AWS's own when none is set)."""
    names = configured_names()
    if "endpoint_url_env" in names:
        return os.environ.get(names["endpoint_url_env"]) or "AWS (default endpoint)"
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
            variable = configured_names().get("endpoint_url_env", "AWS_ENDPOINT_URL")
            reason = f"cannot reach the S3 endpoint {endpoint()} (check {variable})"
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
