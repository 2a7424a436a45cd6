"""Where downloaded weights live, and how they get there safely.

Weights are fetched only from a fixed URL into `$COPYSCAN_CACHE` (default ~/.cache/copyscan),
written to a temporary name and renamed once complete, and checked against a SHA-256: the pinned
one when we know it, else the one recorded the first time the file was fetched (so that a file
changed on disk later is refused rather than run).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import ModelUnavailable
from ..identity import sha256_file

DOWNLOAD_TIMEOUT_S = 20


def cache_dir() -> Path:
    env = os.environ.get("COPYSCAN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "copyscan"


def fetch(filename: str, url: str, sha256: str | None, model_name: str) -> Path:
    """The local path of `filename`, downloaded from `url` into the cache if it is not there yet."""
    target = cache_dir() / filename
    record = target.with_name(target.name + ".sha256")
    if target.exists():
        expected = sha256 or (record.read_text().strip() if record.exists() else None)
        if expected and sha256_file(target) != expected:
            raise ModelUnavailable(
                f"{model_name}: {target} does not match its SHA-256 ({expected[:12]}...); delete it and fetch it again"
            )
        return target
    where = (
        f"{model_name} needs {filename}: download {url} and put it at {target} "
        f"(or set COPYSCAN_CACHE, or pass --model /path/to/{filename})"
    )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = _download(url, target)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ModelUnavailable(f"{where}; the download failed ({reason})") from None
    if sha256 and digest != sha256:
        target.unlink(missing_ok=True)
        raise ModelUnavailable(f"{model_name}: downloaded file has SHA-256 {digest}, expected {sha256}; not used")
    if not sha256:
        record.write_text(digest + "\n")
    return target


def _download(url: str, target: Path) -> str:
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)
                h.update(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return h.hexdigest()
