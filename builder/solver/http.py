"""ADD <url>: fetch the file, verify --checksum, keep it as a one-file source tree.

BuildKit's HTTP source writes the body to a file named by the URL path (mode 0600, owner 0:0,
mtime from Last-Modified or the epoch) and keys the step on the content digest. It re-validates
with ETag and HEAD requests; build-image fetches every time it keys a build and keys on the same
digest, so an unchanged file still hits the cache. Fetched files live under
STORE/http/<digest of url, name, content and mtime>/, immutable once there.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request

from builder.errors import SolveError
from builder.plumbing.records import dataclass

_TIMEOUT = 300
_USER_AGENT = "build-image"


@dataclass(frozen=True)
class Download:
    directory: str               # a directory holding only `filename`
    filename: str
    digest: str                  # sha256 of the content
    last_modified: int | None    # seconds since the epoch, from Last-Modified


def fetch(url: str, filename: str, checksum: str, cache_dir: str) -> Download:
    os.makedirs(cache_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix="tmp-", dir=cache_dir)
    try:
        path = os.path.join(staging, filename)
        digest, last_modified = _download(url, path)
        if checksum and digest != checksum:
            raise SolveError(f"digest mismatch for {url}: {digest} (expected: {checksum})")
        os.chmod(path, 0o600)
        mtime = last_modified or 0
        os.utime(path, (mtime, mtime))
        identity = f"{url}\0{filename}\0{digest}\0{mtime}".encode()
        final = os.path.join(cache_dir, hashlib.sha256(identity).hexdigest())
        if not os.path.isdir(final):
            try:
                os.rename(staging, final)
            except OSError:
                if not os.path.isdir(final):  # not another build that got there first
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Download(final, filename, digest, last_modified)


def _download(url: str, path: str) -> tuple[str, int | None]:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as response, open(path, "wb") as out:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                h.update(chunk)
                out.write(chunk)
            modified = response.headers.get("Last-Modified")
    except urllib.error.HTTPError as error:
        raise SolveError(f'failed to load cache key: invalid response status {error.code} from "{url}"') from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise SolveError(f'failed to load cache key: Get "{url}": {reason}') from None
    last_modified = None
    if modified:
        try:
            last_modified = int(email.utils.parsedate_to_datetime(modified).timestamp())
        except (TypeError, ValueError):
            last_modified = None
    return "sha256:" + h.hexdigest(), last_modified
