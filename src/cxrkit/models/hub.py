"""The Hugging Face Hub, offline first: is it reachable, use only the local cache, and the
local folder of a model repository (from the cache; downloaded only when there is network).

No test and no demo needs the network: a model is a local folder or already in the cache
(``~/.cache/huggingface/hub``, or ``$HF_HOME/hub``), and without either one line says what to
download and where to put it.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

from cxrkit.errors import UserError


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub opens within ``timeout`` seconds."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Make huggingface_hub use its local cache only (no 50 s of retries without network)."""
    import huggingface_hub.constants as hc

    before = hc.HF_HUB_OFFLINE
    hc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hc.HF_HUB_OFFLINE = before


def looks_like_path(source: str) -> bool:
    """``/a/b``, ``./m``, ``~/m``, ``C:\\m`` or ``a/b/c``: a folder, not a Hub id ``org/name``."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


def hub_snapshot(repo_id: str, prefix: str) -> Path:
    """The local folder of Hub repository ``repo_id``: from the cache, else downloaded when
    the Hub is reachable; a UserError saying what to download where when neither works.
    ``prefix`` (``hf:``, ``open_clip:hf-hub:``) is how the user named it, for the messages."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        with hub_offline():
            return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    if not hub_reachable():
        raise UserError(
            f"{prefix}{repo_id} is not in the Hugging Face cache ({HF_HUB_CACHE}) and there is no "
            f"network: on a machine with network run `hf download {repo_id}` and copy that "
            f"cache folder here (or set HF_HOME), or download the model folder and use "
            f"{prefix}/path/to/folder"
        )
    try:
        return Path(snapshot_download(repo_id))
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise UserError(
            f"could not download {prefix}{repo_id} from the Hugging Face Hub "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); check the id, and for "
            "a gated model accept its terms on its page and log in with `hf auth login`"
        ) from None
