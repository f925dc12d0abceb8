"""Where weights come from: a name from the reference's model zoo, an http(s) URL, or a file.

A URL is downloaded once into the torch hub cache (`$TORCH_HOME/hub/checkpoints`, the folder
torch.hub and timm use), with a progress bar, and used from there afterwards. The transfer is
written to a temporary file and moved into place only once it is whole: the advertised size
arrived, the SHA-256 prefix in the file name (torch.hub's `name-<hash>.pth` convention) matches,
and a zip checkpoint's CRCs check out. Nothing partial or corrupt is ever left where a later run
would pick it up.
"""

import fcntl
import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile

import torch
from tqdm import tqdm
from yacs.config import CfgNode

from checkpoints.files import load_checkpoint_file
from models import zoo
from utils import CheckpointError, UserError, write_atomically

_CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 60


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def _url_file_name(url: str) -> str:
    return os.path.basename(urllib.parse.urlparse(url).path) or "download.pth"


def cache_path(url: str) -> str:
    """Where the file of `url` is kept, one file per URL: a published zoo file under its own name in the torch hub
    cache (the name torch.hub and timm give it), any other URL in a folder named by a hash of the whole URL, query
    included, so that two URLs ending in the same file name never share a download."""
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    if zoo.find(url) is None:
        folder = os.path.join(folder, "url-" + hashlib.sha256(url.encode("utf-8")).hexdigest()[:16])
    return os.path.join(folder, _url_file_name(url))


def source_url(spec: str) -> str:
    """The URL to fetch for a zoo name or URL; "" for a file path."""
    entry = zoo.find(spec)
    if entry is not None:
        return entry.url
    return spec if is_url(spec) else ""


def local_weights(spec: str, show_progress: bool = True) -> str:
    """A local file for `spec` (zoo name, URL or path), downloading a URL on first use."""
    url = source_url(spec)
    if not url:
        if not os.path.exists(spec) and (close := zoo.close_names(os.path.basename(spec))):
            raise CheckpointError(f"weights {spec} are neither a file nor a model zoo name (did you mean {close[0]}? "
                                  "`python -m tools.zoo` lists them)")
        return spec
    path = cache_path(url)
    if not os.path.isfile(path):
        _download_once(url, path, show_progress)
    return path


def _download_once(url: str, path: str, show_progress: bool) -> None:
    """Download `url` to `path` once per machine: the first process holds a lock on the cache folder while it
    downloads, and the others (the ranks of a job on this node) wait for it, then find the file in place."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # a file system without flock on folders: each process downloads, and the last whole file stays
        if not os.path.isfile(path):
            write_atomically(path, lambda tmp: _download(url, tmp, path, show_progress))
    finally:
        os.close(fd)


def _expected_hash_prefix(path: str) -> str:
    """The SHA-256 prefix a `name-<hash>.pth` file name promises (torch.hub's convention): 8 to 64 hex digits with
    at least one letter, so that a date or version (`name-20240101.pth`) is not taken for one."""
    match = re.search(r"-([0-9a-f]{8,64})\.[A-Za-z]+$", os.path.basename(path))
    return match.group(1) if match and re.search(r"[a-f]", match.group(1)) else ""


def _download(url: str, tmp: str, path: str, show_progress: bool) -> None:
    """Fetch `url` into `tmp` and check it is whole; every failure is one line naming where to put the file."""
    by_hand = f"download it elsewhere and put it at {path}, or pass a local file"
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response, open(tmp, "wb") as out:
            expected = int(response.headers.get("Content-Length") or 0)
            sha = hashlib.sha256()
            with tqdm(total=expected or None, unit="B", unit_scale=True, desc=f"downloading {url}", file=sys.stderr,
                      disable=not show_progress) as bar:
                while chunk := response.read(_CHUNK_BYTES):
                    out.write(chunk)
                    sha.update(chunk)
                    bar.update(len(chunk))
            received = out.tell()
    except urllib.error.HTTPError as err:
        raise UserError(f"cannot download {url} (HTTP {err.code} {err.reason}); check the name or URL, or "
                        f"{by_hand}") from None
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", None) or type(err).__name__
        raise UserError(f"cannot download {url} ({reason}; offline?); {by_hand}") from None
    if expected and received != expected:
        raise UserError(f"download of {url} stopped after {received} of {expected} bytes; rerun to try again, or "
                        f"{by_hand}")
    prefix = _expected_hash_prefix(path)
    if prefix and not sha.hexdigest().startswith(prefix):
        raise UserError(f"download of {url} has SHA-256 {sha.hexdigest()[:12]}..., not the {prefix} its name "
                        f"promises; it is damaged or another file: {by_hand}")
    _check_archive(tmp, url, by_hand)


def _check_archive(tmp: str, url: str, by_hand: str) -> None:
    """A torch zip checkpoint whose members all pass their CRC check, or a legacy-format one that reads in full."""
    if not zipfile.is_zipfile(tmp):
        with open(tmp, "rb") as f:
            head = f.read(2)
        if head != b"\x80\x02":  # torch's legacy pickle format starts with a protocol-2 pickle
            raise CheckpointError(f"download of {url} is not a PyTorch checkpoint; {by_hand}")
        try:
            load_checkpoint_file(tmp)  # the legacy format has no checksums: only reading it all finds a cut
        except CheckpointError:
            raise CheckpointError(f"download of {url} is not a whole PyTorch checkpoint (cut short or damaged); "
                                  f"rerun to try again, or {by_hand}") from None
        return
    try:
        with zipfile.ZipFile(tmp) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError) as err:
        damaged = str(err)
    if damaged:
        raise CheckpointError(f"download of {url} is damaged ({damaged}); {by_hand}")


def with_local_weights(config: CfgNode) -> CfgNode:
    """`config` with MODEL.PRETRAINED and MODEL.RESUME as local files: zoo names and URLs fetched into the cache."""
    given = {key: config.MODEL[key] for key in ("PRETRAINED", "RESUME") if config.MODEL[key]}
    resolved = {key: local_weights(spec) for key, spec in given.items()}
    if resolved == given:
        return config
    config = config.clone()
    config.defrost()
    config.MODEL.update(resolved)
    config.freeze()
    return config
