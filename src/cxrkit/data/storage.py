"""Where prepared data lives: a local folder or an object-store URI (``s3://``, ``gs://``).

Whole files cross the network here, through LitData's file-system providers (boto3 for
``s3://``, google-cloud-storage for ``gs://``): the manifest, the folder marker, the shards'
``index.json`` and, while preparing, each chunk; images are read by LitData itself
(:mod:`cxrkit.data.shards`). Every call runs in a daemon thread and is given up after
:data:`CALL_SECONDS` (a chunk upload: when boto3's own timeouts give up), so an unanswered
request cannot hold the command; on S3 boto3 gets a short retry policy (:func:`storage_options`)
instead of LitData's default of 1000 adaptive retries. Whatever goes wrong becomes one
:class:`~cxrkit.errors.UserError` line naming the URI, what was tried and what to check.

Local copies (downloaded manifests, LitData's index cache, the staging folder of a prepare
writing to an object store) go under :func:`cache_root`: ``$CXRKIT_CACHE``, else
``~/.cache/cxrkit``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from cxrkit.errors import UserError

SCHEMES = ("s3", "gs")
INSTALL_HINT = "pip install 'cxrkit[scale]'"
CALL_SECONDS = 30.0  # the most one call to an object store may take before it is given up
_T = TypeVar("_T")


def _unfold(location: str) -> str:
    """``location`` with the ``//`` that ``Path("s3://b/p")`` folds away (``s3:/b/p``) put back,
    so a URI that went through ``Path`` on its way here is still a URI."""
    for scheme in SCHEMES:
        if location.startswith(f"{scheme}:/") and not location.startswith(f"{scheme}://"):
            return f"{scheme}://{location[len(scheme) + 2 :]}"
    return location


def is_uri(location: str | Path) -> bool:
    """Whether ``location`` is an object-store URI (``scheme://...``) rather than a path."""
    return "://" in _unfold(str(location))


def check_uri(uri: str) -> str:
    """``uri`` without a trailing ``/``; a UserError for a scheme other than :data:`SCHEMES`
    or a URI without a bucket."""
    scheme, _, rest = uri.partition("://")
    if scheme not in SCHEMES:
        raise UserError(
            f"{uri}: cxrkit reads and writes object stores as {' or '.join(SCHEMES)} URIs "
            f"(s3://bucket/prefix); got {scheme}://. Use a local folder otherwise"
        )
    if not rest.strip("/"):
        raise UserError(f"{uri} names no bucket; give {scheme}://BUCKET/PREFIX")
    return uri.rstrip("/")


def as_location(location: str | Path) -> str | Path:
    """A URI as a string (``Path`` would fold ``s3://`` into ``s3:/``; a folded one is
    unfolded), anything else a Path."""
    return check_uri(_unfold(str(location))) if is_uri(location) else Path(location)


def join(base: str | Path, name: str) -> str:
    """``name`` inside ``base`` (a URI or a folder); an absolute ``name`` stands alone."""
    if is_uri(name) or Path(name).is_absolute():
        return str(name)
    if is_uri(base):
        return f"{_unfold(str(base)).rstrip('/')}/{name}"
    return str(Path(base) / name)


def cache_root() -> Path:
    """Where local copies of remote data go: ``$CXRKIT_CACHE``, else ``~/.cache/cxrkit``."""
    return Path(os.environ.get("CXRKIT_CACHE") or Path.home() / ".cache" / "cxrkit")


def local_dir(uri: str, kind: str) -> Path:
    """The local folder of kind ``kind`` (``manifests``, ``litdata``, ``stage``) for ``uri``."""
    return cache_root() / kind / hashlib.sha256(uri.encode()).hexdigest()[:16]


def require_litdata(why: str) -> ModuleType:
    """The ``litdata`` module, or a UserError saying ``why`` it is needed and how to install."""
    try:
        import litdata
    except ImportError:
        raise UserError(f"{why} needs the litdata package: {INSTALL_HINT}") from None
    return litdata


def storage_options(uri: str, *, reads: bool = False) -> dict[str, Any]:
    """LitData ``storage_options`` for ``uri``: on S3 a botocore config with short timeouts
    and few retries (``reads``: the patience of a training run's image reads); else none."""
    if not uri.startswith("s3://"):
        return {}
    from botocore.config import Config

    attempts, read_timeout = (8, 60) if reads else (2, 15)
    retries = {"max_attempts": attempts, "mode": "standard"}
    return {"config": Config(connect_timeout=5, read_timeout=read_timeout, retries=retries)}


def failure(uri: str, what: str, reason: str) -> UserError:
    """The one line for a failed call to ``uri``: what was tried, why, what to check."""
    return UserError(
        f"cannot reach {uri} (tried to {what}: {reason}); check the URI, the credentials "
        "(AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for other "
        "S3 stores; GOOGLE_APPLICATION_CREDENTIALS for gs://) and the network, or copy the "
        "data to a local folder and pass that"
    )


def _reason(err: BaseException) -> str:
    return " ".join(f"{type(err).__name__}: {err}".split())[:300]


def bounded(
    uri: str, what: str, call: Callable[[], _T], seconds: float | None = CALL_SECONDS
) -> _T:
    """``call()``, which reaches ``uri`` to do ``what``, given up after ``seconds`` (None:
    never; it runs in a daemon thread): any failure (no credentials, no network, no such
    bucket or object, no answer) is one UserError line (:func:`failure`)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as err:  # reported in the caller's thread
            box["error"] = err

    worker = threading.Thread(target=run, name=f"cxrkit-storage {what}", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise failure(uri, what, f"no answer within {seconds or 0:.0f} s")
    if "error" in box:
        if isinstance(box["error"], UserError):
            raise box["error"]
        raise failure(uri, what, _reason(box["error"]))
    return box["value"]


def _provider(uri: str) -> Any:
    """LitData's file-system provider for ``uri``'s scheme, with :func:`storage_options`."""
    require_litdata(f"reading or writing {uri}")
    from litdata.streaming import fs_provider

    if uri.startswith("gs://"):
        try:
            return fs_provider.GCPFsProvider(storage_options=storage_options(uri))
        except ModuleNotFoundError:
            raise UserError(
                f"{uri}: gs:// needs the google-cloud-storage package: "
                "pip install google-cloud-storage"
            ) from None
    return fs_provider.S3FsProvider(storage_options=storage_options(uri))


def download(uri: str, local: Path) -> Path:
    """Copy the object ``uri`` to ``local`` (written beside it, then renamed: a process
    reading ``local`` never sees half a file, and ranks of one node may download at once)."""
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{os.getpid()}.{threading.get_ident()}.tmp")

    def fetch() -> None:
        try:
            _provider(uri).download_file(uri, str(tmp))
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    bounded(uri, f"download {uri.rpartition('/')[2]}", fetch)
    return local


def upload(local: Path, uri: str, seconds: float | None = CALL_SECONDS) -> None:
    """Copy the file ``local`` to the object ``uri`` (given up after ``seconds``)."""

    def send() -> None:
        _provider(uri).upload_file(str(local), uri)

    bounded(uri, f"upload {local.name}", send, seconds)


def exists(uri: str) -> bool:
    """Whether the object ``uri`` exists (a missing bucket or no access: UserError)."""

    def probe() -> bool:
        try:
            return bool(_provider(uri).exists(uri))
        except Exception as err:  # S3's 404 arrives as an error naming the status
            if "404" in str(err) or "Not Found" in str(err) or "NoSuchKey" in str(err):
                return False
            raise

    return bounded(uri, f"look for {uri.rpartition('/')[2]}", probe)


def is_empty(uri: str) -> bool:
    """Whether nothing is stored under the prefix ``uri``."""
    return bounded(uri, "list the prefix", lambda: bool(_provider(uri).is_empty(uri)))


def delete(uri: str) -> None:
    """Delete the object ``uri`` (or every object under the prefix ``uri``)."""
    bounded(uri, "delete", lambda: _provider(uri).delete_file_or_directory(uri))
