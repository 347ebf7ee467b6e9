"""Which labelled image a row of another file means: image identity is the path.

Every CSV that cxrkit writes identifies an image by its path relative to the source root (a
prepared dataset's ``image_id``, ``infer``'s ``image_id``). Another tool's CSV may hold
absolute paths, paths relative to another folder, or bare file names, so a row's key is
matched to the labelled ids by these rules, in order:

1. the same relative path (``patient1/study1/view1_frontal.jpg``);
2. else the longest trailing run of path components that the key shares with the labelled
   ids, when it is shared with exactly **one** id: ``/data/CheXpert/train/patient1/study1/
   view1_frontal.jpg`` ends with the id ``train/patient1/study1/view1_frontal.jpg``; the key
   ``images/x.png`` is the end of the id ``images_001/images/x.png``; ``/mnt/other/x.png``
   shares only ``x.png``, which matches when no other labelled image has that file name;
3. a key whose longest shared run is shared with two or more ids is **ambiguous**: an error
   naming the row and two of the ids it could be, never a guess (a CheXpert key
   ``view1_frontal.jpg``, or ``patient9/study1/view1_frontal.jpg`` for a patient the labels do
   not have). Two rows that match the same id are an error too. A key that shares not even
   its file name is returned as unmatched (counted by the caller).

Paths are compared as ``/``-separated components (``\\`` counts as ``/``; empty and ``.``
components are dropped), case-sensitively, as file systems on Linux compare them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cxrkit.errors import UserError


def path_parts(value: str) -> tuple[str, ...]:
    """``"./a\\\\b//c.png"`` -> ``("a", "b", "c.png")``."""
    text = str(value).strip().replace("\\", "/")
    return tuple(p for p in text.split("/") if p not in ("", "."))


def normalise_key(value: str) -> str:
    """The comparable form of a path or id: its components joined by ``/``."""
    return "/".join(path_parts(value))


def match_keys(
    keys: Sequence[str], ids: Sequence[str], *, where: str, labels_where: str
) -> np.ndarray:
    """For each of ``keys`` (``(n,)`` rows of ``where``), the index into ``ids`` (``(m,)``
    unique labelled ids of ``labels_where``) of the image it names, or -1 (see the module
    docstring for the rules). Raises a UserError for an ambiguous key or two keys naming one
    image."""
    id_parts = [path_parts(i) for i in ids]
    exact = {"/".join(p): j for j, p in enumerate(id_parts)}
    owners: dict[str, list[int]] = {}  # trailing run -> up to two ids ending with it
    for j, parts in enumerate(id_parts):
        for k in range(1, len(parts) + 1):
            run = owners.setdefault("/".join(parts[-k:]), [])
            if len(run) < 2:
                run.append(j)
    out = np.full(len(keys), -1, dtype=np.int64)
    claimed: dict[int, str] = {}
    for i, key in enumerate(keys):
        parts = path_parts(key)
        j = exact.get("/".join(parts), -1)
        for k in range(len(parts), 0, -1) if j < 0 else ():
            found = owners.get("/".join(parts[-k:]))
            if found is None:
                continue
            if len(found) > 1:
                raise UserError(
                    f"{where}: image {key!r} is ambiguous: it could be {ids[found[0]]!r} or "
                    f"{ids[found[1]]!r} of {labels_where}; give paths relative to the "
                    "dataset root (as its image_id column holds them)"
                )
            j = found[0]
            break
        if j >= 0:
            if j in claimed:
                raise UserError(
                    f"{where}: rows {claimed[j]!r} and {key!r} are the same image "
                    f"{ids[j]!r} of {labels_where}; one row per image"
                )
            claimed[j] = str(key)
        out[i] = j
    return out
