"""The image cache as LitData shards: written from the decode-once cache, read back by slot.

``cxrkit prepare ... --format litdata`` decodes every image once into the uint8 memmap of
:mod:`cxrkit.data.cache` (same decoding, same resume, same failures), then
:func:`write_shards` copies its slots, in order, into LitData chunks with LitData's own
writer (``litdata.streaming.writer.BinaryWriter``, what ``litdata.optimize`` runs in its
worker processes; one in-process writer keeps item ``i`` = slot ``i`` without the workers):

- ``LOCATION/index.json``: LitData's index (chunk files, items per chunk);
- ``LOCATION/chunk-0-<k>.bin``: about :data:`SHARD_BYTES` each, uncompressed; item ``i`` is
  ``{"slot": i, "image": (size, size) uint8}``, the bytes of cache slot ``i``.

``LOCATION`` is a local folder or an object-store URI (``s3://``, ``gs://``; see
:mod:`cxrkit.data.storage`). :class:`ShardReader` reads any slots back, a
``(k, size, size)`` uint8 array per request like a fancy index of the memmap, through
LitData's ``StreamingDataset.__getitem__``: from a local folder it reads the chunk files in
place; from an object store it fetches each image's byte range (two ranged GETs per image,
uncompressed chunks; :data:`REMOTE_THREADS` requests in flight per reader), so no chunk has to
fit on the training node's disk.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cxrkit.data.cache import open_cache
from cxrkit.data.storage import (
    bounded,
    download,
    is_uri,
    join,
    local_dir,
    require_litdata,
    storage_options,
    upload,
)
from cxrkit.errors import UserError

FORMAT = "litdata"
SHARDS = "shards"  # the shards' folder inside a prepared folder (or under its URI)
SHARD_BYTES = 64 * 2**20  # LitData's usual chunk size: few files, each a cheap object
INDEX = "index.json"
REMOTE_THREADS = 16  # ranged GETs in flight per reader (per loader worker) on an object store


def write_shards(
    cache_file: str | Path,
    n: int,
    size: int,
    location: str,
    *,
    shard_bytes: int = SHARD_BYTES,
    scratch: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Write the ``(n, size, size)`` uint8 memmap ``cache_file`` as LitData shards at
    ``location`` (a folder, replaced, or a URI); item ``i`` is slot ``i``. For a URI the
    chunks are written in the local folder ``scratch`` and each is uploaded, then deleted, as
    soon as it is complete (the index last), so the stage never holds more than one chunk
    beside the memmap. Returns what the manifest header's ``cache`` records about them."""
    litdata = require_litdata("--format litdata (LitData shards)")
    from litdata.streaming.writer import BinaryWriter

    remote = is_uri(location)
    if remote and scratch is None:
        raise ValueError("writing shards to an object store needs a local scratch folder")
    folder = Path(scratch) if remote else Path(location)  # where the chunk files are written
    shutil.rmtree(folder, ignore_errors=True)  # shards of an earlier, interrupted or replaced run

    def ship(chunk: str) -> None:
        if remote:
            upload(Path(chunk), join(location, Path(chunk).name), seconds=None)  # 64 MB
            Path(chunk).unlink()

    images = open_cache(cache_file, n, size)
    writer = BinaryWriter(str(folder), chunk_bytes=shard_bytes)
    for slot in tqdm(range(n), desc="writing shards", unit="img", disable=not progress):
        chunk = writer.add_item(slot, {"slot": slot, "image": np.array(images[slot])})
        if chunk:
            ship(chunk)
    for chunk in writer.done():
        ship(chunk)
    writer.merge()  # this process's index -> index.json
    items = _index_items(str(folder))
    if items != n:
        raise UserError(f"{location}: LitData wrote {items} images, expected {n}; run again")
    if remote:
        upload(folder / INDEX, join(location, INDEX))
        shutil.rmtree(folder)
    return {"shard_bytes": shard_bytes, "litdata_version": litdata.__version__}


def _index_items(location: str) -> int:
    """Number of items LitData's ``index.json`` at ``location`` lists (0 without one)."""
    if is_uri(location):
        index = download(join(location, INDEX), local_dir(location, "index") / INDEX)
    else:
        index = Path(location) / INDEX
        if not index.is_file():
            return 0
    return sum(int(c["chunk_size"]) for c in json.loads(index.read_text())["chunks"])


class ShardReader:
    """The ``(n, size, size)`` uint8 images of the shards at ``location``, by slot.

    ``reader[slots]`` (an int array) is ``(len(slots), size, size)`` uint8, ``reader[i]``
    ``(size, size)``: the same as indexing the memmap cache the shards were written from.
    Opens LitData's dataset on first use and pickles without it (loader workers open their
    own); :meth:`check` opens it now and verifies the shards hold ``n`` images of ``size``.
    """

    def __init__(self, location: str, n: int, size: int):
        self.location, self.n, self.size = location, n, size
        self._dataset: Any = None
        self._pool: ThreadPoolExecutor | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n, self.size, self.size)

    def __len__(self) -> int:
        return self.n

    def _open(self) -> Any:
        if self._dataset is not None:
            return self._dataset
        what = f"the LitData shards at {self.location}"
        litdata = require_litdata(f"reading {what}")
        if not is_uri(self.location):
            if not (Path(self.location) / INDEX).is_file():
                raise UserError(
                    f"{what} are missing or incomplete (no {INDEX}); run `cxrkit prepare` again"
                )
            self._dataset = litdata.StreamingDataset(self.location, batch_decode=0)
            return self._dataset

        def connect() -> Any:
            return litdata.StreamingDataset(
                self.location,
                cache_dir=str(local_dir(self.location, "litdata")),
                storage_options=storage_options(self.location, reads=True),
                batch_decode=0,  # random access: decode the one image asked for
            )

        self._dataset = bounded(self.location, f"open the shards' {INDEX}", connect)
        return self._dataset

    def check(self) -> ShardReader:
        """Open the shards now; a UserError unless they hold ``n`` images of ``size`` px."""
        items = _index_items(self.location)
        if items != self.n:
            raise UserError(
                f"the LitData shards at {self.location} hold {items} images, the manifest "
                f"{self.n}; run `cxrkit prepare` again"
            )
        last = self[self.n - 1]
        if last.shape != (self.size, self.size) or last.dtype != np.uint8:
            raise UserError(
                f"the LitData shards at {self.location} hold {last.dtype} images of shape "
                f"{last.shape}, the manifest {self.size} x {self.size} uint8"
            )
        return self

    def _image(self, slot: int) -> np.ndarray:
        """The ``(size, size)`` uint8 image of ``slot``, checked to be that slot's."""
        item = self._open()[slot]
        if item["slot"] != slot:
            raise UserError(
                f"the LitData shards at {self.location} hold slot {item['slot']} at position "
                f"{slot}: not written by `cxrkit prepare`; prepare again"
            )
        return item["image"]

    def __getitem__(self, slots: int | np.integer | np.ndarray) -> np.ndarray:
        single = np.ndim(slots) == 0
        wanted = np.atleast_1d(np.asarray(slots, dtype=np.int64))
        if wanted.size and (wanted.min() < 0 or wanted.max() >= self.n):
            raise IndexError(f"slots {wanted.min()}..{wanted.max()} outside 0..{self.n - 1}")
        images = np.empty((len(wanted), self.size, self.size), dtype=np.uint8)
        order = np.argsort(wanted, kind="stable")  # chunk by chunk, as the memmap reads
        if is_uri(self.location) and len(order) > 1:
            # Each image is a ranged GET: overlap their latencies. The first read, in this
            # thread, sets LitData's reader up before the threads share it.
            images[order[0]] = self._image(int(wanted[order[0]]))
            if self._pool is None:
                self._pool = ThreadPoolExecutor(REMOTE_THREADS, thread_name_prefix="cxrkit-shards")
            rest = [int(wanted[k]) for k in order[1:]]
            for k, image in zip(order[1:], self._pool.map(self._image, rest), strict=True):
                images[k] = image
        else:  # a local folder: LitData keeps one chunk mapped, read in order
            for k in order:
                images[k] = self._image(int(wanted[k]))
        return images[0] if single else images

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_dataset": None, "_pool": None}
