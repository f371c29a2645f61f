"""A distribution-spec client: resolve a reference to a manifest, pull its blobs, push an image.

Every byte that comes from a registry is checked against the digest that names it before it is
stored or returned: manifests as a whole, config and layers as they stream into the BlobStore.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import re
from typing import Callable, Iterator, Mapping, Protocol, Sequence
from urllib.parse import urlencode, urljoin, urlsplit

from builder.cache.blobs import BlobStore, sha256_digest
from builder.errors import (AuthenticationError, DigestMismatch, NotFoundError, RegistryError,
                            UnsupportedMediaType)
from builder.image.media import (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, INDEX_TYPES, MANIFEST_TYPES,
                                 OCI_INDEX, OCI_MANIFEST, Descriptor, Platform)
from builder.plumbing.records import dataclass

from .auth import Authorizer, CredentialStore
from .platforms import select_manifest
from .reference import DOCKER_HUB, Reference
from .transport import _CONNECTION_ERRORS, ATTEMPTS, Response, Transport, TransferStalled

# Docker's registry answers a converted old format unless the Docker types are accepted too.
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))
_SCHEMA1_TYPES = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
_MAX_MANIFEST = 4 << 20   # containerd's limit too: a bigger "manifest" is a misbehaving server
_MAX_CONFIG = 32 << 20
_DOWNLOADS = 3
CHUNK_SIZE = 32 << 20     # blobs larger than this are uploaded in PATCH chunks of this size
_STREAM_PIECE = 8 << 20   # a blob made while it is pushed goes up in PATCHes of at most this

Progress = Callable[[str, int, int], None]  # (digest, bytes done, bytes total); called from worker threads
# (digest, what happened) for each blob of a push: "exists", "mounted" or "pushed"; from worker threads
BlobStatus = Callable[[str, str], None]


class StreamedBlob(Protocol):
    """A blob made while it is pushed (a layer compressed on the way to the registry)."""

    def chunks(self) -> Iterator[bytes]:
        """Its bytes, as they are made."""

    def finish(self) -> Descriptor:
        """Once the chunks are exhausted: its descriptor (and it is kept where it was made)."""

    def abort(self) -> None:
        """Stop making it; nothing once it is finished."""


@dataclass(frozen=True)
class PulledImage:
    reference: Reference          # as asked for, pinned to manifest_digest
    manifest_digest: str
    manifest: bytes               # the platform's image manifest, exactly as served
    manifest_media_type: str
    config_digest: str
    config: bytes
    layers: tuple[Descriptor, ...]


class RegistryClient:
    def __init__(self, *, insecure_registries: Sequence[str] = (), credentials: CredentialStore | None = None,
                 timeout: float = 30.0, progress: Progress | None = None, blob_status: BlobStatus | None = None,
                 chunk_size: int = CHUNK_SIZE, transport: Transport | None = None):
        """TRANSPORT replaces the HTTP transport (anything with Transport's `base_url`, `request`
        and `close`, such as a test's in-memory registry); it then decides plain HTTP itself."""
        self._insecure = frozenset(insecure_registries)
        if transport is None:
            transport = Transport(timeout=timeout, plain_http=self._plain_http)
        self._transport = transport
        self._auth = Authorizer(self._transport, credentials or CredentialStore())
        self._progress = progress or (lambda digest, done, total: None)
        self._blob_status = blob_status or (lambda digest, status: None)
        self._chunk_size = chunk_size

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- resolve and pull -------------------------------------------------------------------

    def resolve(self, ref: Reference, platform: Platform = Platform()) -> tuple[str, bytes, str]:
        """(digest, bytes, media type) of REF's image manifest for PLATFORM, following an index."""
        digest, data, media_type = self._get_manifest(ref, ref.digest or ref.tag or "latest")
        if media_type in INDEX_TYPES:
            entries = [Descriptor.from_json(m) for m in _json(data, ref, "index").get("manifests") or []]
            chosen = select_manifest(entries, platform)
            if chosen is None:
                available = ", ".join(sorted({str(e.platform) for e in entries if e.platform})) or "none"
                raise NotFoundError(f"{ref.familiar}: no image for platform {platform} (the index has: {available})")
            digest, data, media_type = self._get_manifest(ref, chosen.digest)
            if media_type not in MANIFEST_TYPES:
                raise UnsupportedMediaType(
                    f"{ref.familiar}: the entry for {platform} is {media_type or 'of unknown type'}, not an image manifest")
        return digest, data, media_type

    def pull(self, ref: Reference, blobs: BlobStore, platform: Platform = Platform()) -> PulledImage:
        """Resolve REF and fetch its config and layers into BLOBS (skipping blobs already there).

        The manifest and config are stored last, so a store that holds an image's manifest also
        holds everything it names.
        """
        manifest_digest, manifest, media_type = self.resolve(ref, platform)
        doc = _json(manifest, ref, "manifest")
        try:
            config_desc = Descriptor.from_json(doc["config"])
            layers = tuple(Descriptor.from_json(d) for d in doc.get("layers") or ())
        except (KeyError, TypeError, ValueError):
            raise RegistryError(f"{ref.familiar}: manifest {manifest_digest} lacks a valid config or layers") from None
        config = self._get_config(ref, config_desc, blobs)
        self.fetch_blobs(ref, layers, blobs)
        blobs.put_bytes(config, config_desc.digest)
        blobs.put_bytes(manifest, manifest_digest)
        return PulledImage(ref.with_digest(manifest_digest), manifest_digest, manifest, media_type,
                           config_desc.digest, config, layers)

    def fetch_blob(self, ref: Reference, desc: Descriptor, blobs: BlobStore) -> None:
        """Stream one blob of REF's repository into BLOBS, verified (unless already there)."""
        if not blobs.has(desc.digest):
            self._download(ref, desc, blobs)

    def fetch_blobs(self, ref: Reference, descs: Sequence[Descriptor], blobs: BlobStore) -> None:
        """fetch_blob for each of DESCS, a few at a time; the first failure stops the rest."""
        missing = {d.digest: d for d in descs if not blobs.has(d.digest)}
        self._concurrently([lambda d=d: self._download(ref, d, blobs) for d in missing.values()])

    def manifest(self, ref: Reference) -> tuple[str, bytes, str]:
        """(digest, bytes, media type) of what REF names, as served: an index is not followed."""
        return self._get_manifest(ref, ref.digest or ref.tag or "latest")

    def small_blob(self, ref: Reference, desc: Descriptor, blobs: BlobStore) -> bytes:
        """A config-sized blob of REF's repository, verified, from BLOBS if there (not stored)."""
        return self._get_config(ref, desc, blobs)

    def list_tags(self, ref: Reference, page_size: int | None = None) -> list[str]:
        """Every tag of REF's repository (`GET /v2/<name>/tags/list`), following the `Link: <...>;
        rel="next"` pages in the registry's order. PAGE_SIZE asks for pages of that many (`n=`)."""
        url = self._url(ref, "tags/list") + (f"?{urlencode({'n': page_size})}" if page_size else "")
        tags: list[str] = []
        seen: set[str] = set()
        while url:
            if url in seen:
                raise RegistryError(f"{ref.registry}: the tag list of {ref.repository} links back to {url}")
            seen.add(url)
            with self._request(ref, "GET", url) as response:
                self._check(response, ref, "tag list")
                data = _read_limited(response, _MAX_MANIFEST, f"{ref.familiar}: tag list")
                link = response.header("Link")
            page = _json(data, ref, "tag list").get("tags") or []
            if not isinstance(page, list) or not all(isinstance(t, str) for t in page):
                raise RegistryError(f"{ref.familiar}: tag list is not a list of strings")
            tags.extend(page)
            url = _next_link(link, url)
        return tags

    def _get_manifest(self, ref: Reference, tag_or_digest: str) -> tuple[str, bytes, str]:
        url = self._url(ref, f"manifests/{tag_or_digest}")
        with self._request(ref, "GET", url, headers={"Accept": MANIFEST_ACCEPT}) as response:
            self._check(response, ref, f"manifest {tag_or_digest}")
            data = _read_limited(response, _MAX_MANIFEST, f"{ref.familiar}: manifest")
        digest = sha256_digest(data)
        if tag_or_digest.startswith("sha256:") and digest != tag_or_digest:
            raise DigestMismatch(tag_or_digest, digest, f"manifest of {ref.familiar}")
        served = response.header("Docker-Content-Digest")
        if served.startswith("sha256:") and served != digest:
            raise DigestMismatch(served, digest, f"manifest of {ref.familiar}")
        return digest, data, _media_type(response.header("Content-Type"), data, ref)

    def _get_config(self, ref: Reference, desc: Descriptor, blobs: BlobStore) -> bytes:
        if blobs.has(desc.digest):
            return blobs.get_bytes(desc.digest)
        if desc.size > _MAX_CONFIG:
            raise RegistryError(f"{ref.familiar}: config {desc.digest} claims {desc.size} bytes; refusing")
        with self._request(ref, "GET", self._url(ref, f"blobs/{desc.digest}")) as response:
            self._check(response, ref, f"config {desc.digest}")
            data = _read_limited(response, _MAX_CONFIG, f"{ref.familiar}: config")
        actual = sha256_digest(data)
        if actual != desc.digest:
            raise DigestMismatch(desc.digest, actual, f"config of {ref.familiar}")
        return data

    def _download(self, ref: Reference, desc: Descriptor, blobs: BlobStore) -> None:
        """Stream one blob into BLOBS, hashing as it arrives. A dropped or stalled connection is
        resumed where it stopped (`Range: bytes=N-`; from the start if the registry ignores it),
        and the digest is checked over the whole."""
        url = self._url(ref, f"blobs/{desc.digest}")
        writers = [blobs.writer()]  # the current one last; a registry that ignores Range restarts it
        try:
            for attempt in range(ATTEMPTS):
                try:
                    if writers[-1].size < desc.size or not desc.size:
                        self._receive(ref, desc, url, writers, blobs)
                    writers[-1].commit(desc.digest)  # DigestMismatch here leaves nothing stored
                    return
                except _CONNECTION_ERRORS as e:
                    if attempt == ATTEMPTS - 1:
                        raise RegistryError(f"{ref.registry}: download of blob {desc.digest} failed "
                                            f"({ATTEMPTS} attempts, {writers[-1].size} of {desc.size} bytes): "
                                            f"{_transfer_error(e)}") from None
        finally:
            for writer in writers:
                writer.abort()

    def _receive(self, ref: Reference, desc: Descriptor, url: str, writers: list, blobs: BlobStore) -> None:
        """The rest of the blob into WRITERS[-1], or all of it into a fresh writer appended."""
        resume = writers[-1].size
        headers = {"Range": f"bytes={resume}-"} if resume else None
        with self._request(ref, "GET", url, headers=headers) as response:
            if resume and response.status == 206:
                start = response.header("Content-Range").removeprefix("bytes ").partition("-")[0]
                if start != str(resume):
                    raise RegistryError(f"{ref.registry}: blob {desc.digest}: asked for bytes from {resume}, "
                                        f"got the range {response.header('Content-Range')!r}")
            else:
                self._check(response, ref, f"blob {desc.digest}")
                if resume:  # the whole blob again: start over
                    writers.append(blobs.writer())
            writer = writers[-1]
            for chunk in response.iter_chunks():
                writer.write(chunk)
                if writer.size > desc.size:
                    raise RegistryError(
                        f"{ref.familiar}: blob {desc.digest} is larger than the {desc.size} "
                        "bytes its descriptor says")
                self._progress(desc.digest, writer.size, desc.size)

    # -- push -------------------------------------------------------------------------------

    def push(self, ref: Reference, blobs: BlobStore, manifest: bytes, media_type: str,
             mount_from: Mapping[str, str] | None = None) -> str:
        """Upload what the registry lacks, then put MANIFEST under REF's tag; returns its digest.

        An index is pushed with each of its manifests (read from BLOBS) and their blobs.
        MOUNT_FROM maps a blob digest to another repository of the same registry that has it: the
        registry is asked to mount it from there instead of receiving it again.
        """
        mount_from = mount_from or {}
        if media_type in INDEX_TYPES:
            for entry in _json(manifest, ref, "index").get("manifests") or ():
                child = Descriptor.from_json(entry)
                if child.media_type not in MANIFEST_TYPES:
                    raise UnsupportedMediaType(f"{ref.familiar}: cannot push index entry of type {child.media_type!r}")
                child_bytes = blobs.get_bytes(child.digest)
                self._push_image_blobs(ref, blobs, child_bytes, mount_from)
                self._put_manifest(ref, child.digest, child_bytes, child.media_type)
        elif media_type in MANIFEST_TYPES:
            self._push_image_blobs(ref, blobs, manifest, mount_from)
        else:
            raise UnsupportedMediaType(f"{ref.familiar}: cannot push a manifest of type {media_type!r}")
        return self._put_manifest(ref, ref.tag or sha256_digest(manifest), manifest, media_type)

    def push_streamed(self, ref: Reference, blobs: BlobStore, config: Descriptor,
                      layers: Sequence["Descriptor | StreamedBlob"],
                      manifest_for: Callable[[list[Descriptor]], tuple[bytes, str]],
                      mount_from: Mapping[str, str] | None = None) -> tuple[str, bytes]:
        """Upload CONFIG and LAYERS, then put under REF's tag the manifest MANIFEST_FOR makes of
        the layers' final descriptors; returns its digest and bytes. A layer that is a Descriptor
        is sent from BLOBS as `push` sends it (HEAD first, a mount if MOUNT_FROM names a source); a
        StreamedBlob is made while it is sent (a layer compressed on the way): its chunks go up as
        they come, and its digest is known only when it is done."""
        mount_from = mount_from or {}
        final: list[Descriptor | None] = [None] * len(layers)

        def send(index: int, layer) -> None:
            if isinstance(layer, Descriptor):
                self._upload(ref, blobs, layer, mount_from.get(layer.digest))
                final[index] = layer
            else:
                final[index] = self._upload_stream(ref, layer)

        jobs = [lambda: self._upload(ref, blobs, config, mount_from.get(config.digest))]
        jobs += [lambda i=i, layer=layer: send(i, layer) for i, layer in enumerate(layers)]
        try:
            self._concurrently(jobs)
        finally:
            for layer in layers:
                if not isinstance(layer, Descriptor):
                    layer.abort()  # a no-op once finished
        manifest, media_type = manifest_for([d for d in final if d is not None])
        return self._put_manifest(ref, ref.tag or sha256_digest(manifest), manifest, media_type), manifest

    def _upload_stream(self, ref: Reference, blob: "StreamedBlob") -> Descriptor:
        """POST an upload, PATCH the chunks in pieces of chunk_size as BLOB makes them, PUT the rest
        with the digest. Each PATCH body is kept until it is sent, so a retry can resend it."""
        with self._request(ref, "POST", self._url(ref, "blobs/uploads/"), push=True) as response:
            self._check(response, ref, "upload", expect=(202,))
            location = response.header("Location")
        if not location:
            raise RegistryError(f"{ref.registry}: upload started without a Location header")
        location = urljoin(self._url(ref, "blobs/uploads/"), location)
        # Smaller pieces than a stored blob's chunks: the compressor goes on while one is sent.
        piece_size = min(self._chunk_size, _STREAM_PIECE)
        pending, offset = bytearray(), 0
        for chunk in blob.chunks():
            pending += chunk
            while len(pending) >= piece_size:
                piece = bytes(pending[:piece_size])
                del pending[:piece_size]
                location = self._patch(ref, location, piece, offset)
                offset += len(piece)
        desc = blob.finish()
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(pending))}
        put_url = f"{location}{'&' if urlsplit(location).query else '?'}digest={desc.digest}"
        with self._request(ref, "PUT", put_url, push=True, headers=headers, body=bytes(pending)) as response:
            self._check(response, ref, f"upload of {desc.digest}", expect=(201, 204))
        self._progress(desc.digest, desc.size, desc.size)
        self._blob_status(desc.digest, "pushed")
        return desc

    def _patch(self, ref: Reference, location: str, piece: bytes, offset: int) -> str:
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(piece)),
                   "Content-Range": f"{offset}-{offset + len(piece) - 1}"}
        with self._request(ref, "PATCH", location, push=True, headers=headers, body=piece) as response:
            self._check(response, ref, f"upload (bytes {offset}-{offset + len(piece) - 1})", expect=(202,))
            return urljoin(location, response.header("Location") or location)

    def _push_image_blobs(self, ref: Reference, blobs: BlobStore, manifest: bytes,
                          mount_from: Mapping[str, str]) -> None:
        doc = _json(manifest, ref, "manifest")
        descs = [Descriptor.from_json(doc["config"])] + [Descriptor.from_json(d) for d in doc.get("layers") or ()]
        unique = {d.digest: d for d in descs}
        self._concurrently([lambda d=d: self._upload(ref, blobs, d, mount_from.get(d.digest))
                            for d in unique.values()])

    def _upload(self, ref: Reference, blobs: BlobStore, desc: Descriptor, mount_source: str | None) -> None:
        blob_url = self._url(ref, f"blobs/{desc.digest}")
        with self._request(ref, "HEAD", blob_url, push=True) as response:
            if response.status == 200:
                self._progress(desc.digest, desc.size, desc.size)
                self._blob_status(desc.digest, "exists")
                return
            if response.status != 404:
                self._check(response, ref, f"blob {desc.digest}")
        size = blobs.size(desc.digest)  # BlobNotFound if the local store lacks it
        start_url = self._url(ref, "blobs/uploads/")
        if mount_source and mount_source != ref.repository:
            # 201: mounted, nothing to send; 202: the registry declined and started an upload instead.
            start_url += "?" + urlencode({"mount": desc.digest, "from": mount_source})
        with self._request(ref, "POST", start_url, push=True) as response:
            self._check(response, ref, "upload", expect=(201, 202))
            location = response.header("Location")
            mounted = response.status == 201
        if mounted:
            self._progress(desc.digest, size, size)
            self._blob_status(desc.digest, "mounted")
            return
        if not location:
            raise RegistryError(f"{ref.registry}: upload started without a Location header")
        location = urljoin(self._url(ref, "blobs/uploads/"), location)
        if size > self._chunk_size:
            location = self._upload_chunks(ref, blobs, desc, size, location)
            headers, body = {"Content-Length": "0"}, None
        else:
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            body = lambda: blobs.open(desc.digest)  # noqa: E731
        put_url = f"{location}{'&' if urlsplit(location).query else '?'}digest={desc.digest}"
        with self._request(ref, "PUT", put_url, push=True, headers=headers, body=body) as response:
            self._check(response, ref, f"upload of {desc.digest}", expect=(201, 204))
        self._progress(desc.digest, size, size)
        self._blob_status(desc.digest, "pushed")

    def _upload_chunks(self, ref: Reference, blobs: BlobStore, desc: Descriptor, size: int, location: str) -> str:
        """Send the blob in PATCH requests of chunk_size bytes; returns the location to finish at.
        A chunk is resent whole when its connection drops (the transport retries)."""
        offset = 0
        while offset < size:
            length = min(self._chunk_size, size - offset)
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length),
                       "Content-Range": f"{offset}-{offset + length - 1}"}
            body = lambda start=offset, n=length: _FileRange(blobs.open(desc.digest), start, n)  # noqa: E731
            with self._request(ref, "PATCH", location, push=True, headers=headers, body=body) as response:
                self._check(response, ref, f"upload of {desc.digest} (bytes {offset}-{offset + length - 1})",
                            expect=(202,))
                location = urljoin(location, response.header("Location") or location)
            offset += length
            self._progress(desc.digest, offset, size)
        return location

    def ping(self, registry: str) -> None:
        """Check that REGISTRY accepts this client's credentials (`docker login`): GET /v2/,
        answering a Basic challenge with the password, a Bearer one with a token for no scope."""
        host = "registry-1.docker.io" if registry == DOCKER_HUB else registry
        url = f"{self._transport.base_url(host)}/v2/"
        try:
            response = self._transport.request("GET", url)
            if response.status == 401:
                challenge = response.header("WWW-Authenticate")
                response.close()
                header = self._auth.answer(registry, "", challenge, None)
                response = self._transport.request("GET", url, {"Authorization": header})
                if response.status == 401:
                    response.close()
                    raise AuthenticationError(f"login to {registry} failed: incorrect username or password")
        except _CONNECTION_ERRORS as e:
            raise RegistryError(f"cannot reach registry {registry}: {e}") from None
        with response:
            if response.status != 200:
                raise RegistryError(f"{registry}: GET /v2/ answered HTTP {response.status} {response.reason}"
                                    f"{_error_detail(response)}")

    def _put_manifest(self, ref: Reference, tag_or_digest: str, manifest: bytes, media_type: str) -> str:
        declared = _json(manifest, ref, "manifest").get("mediaType")
        if declared and declared != media_type:
            raise UnsupportedMediaType(f"{ref.familiar}: manifest declares {declared} but is pushed as {media_type}")
        with self._request(ref, "PUT", self._url(ref, f"manifests/{tag_or_digest}"), push=True,
                           headers={"Content-Type": media_type}, body=manifest) as response:
            self._check(response, ref, f"manifest {tag_or_digest}", expect=(200, 201, 202))
        return sha256_digest(manifest)

    # -- HTTP plumbing ----------------------------------------------------------------------

    def _plain_http(self, host: str) -> bool:
        if host in self._insecure:
            return True
        name = urlsplit(f"//{host}").hostname or host
        if name in self._insecure or name == "localhost":
            return True
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False

    def _url(self, ref: Reference, path: str) -> str:
        host = "registry-1.docker.io" if ref.registry == DOCKER_HUB else ref.registry
        return f"{self._transport.base_url(host)}/v2/{ref.repository}/{path}"

    def _request(self, ref: Reference, method: str, url: str, *, push: bool = False,
                 headers: dict[str, str] | None = None, body=None) -> Response:
        """One request with authentication: a known scheme up front, else answer the 401 once."""
        scope = f"repository:{ref.repository}:{'pull,push' if push else 'pull'}"
        headers = dict(headers or {})
        sent = self._auth.header(ref.registry, scope)
        if sent:
            headers["Authorization"] = sent
        response = self._transport.request(method, url, headers, body)
        if response.status != 401:
            return response
        challenge = response.header("WWW-Authenticate")
        response.close()
        headers["Authorization"] = self._auth.answer(ref.registry, scope, challenge, sent)
        response = self._transport.request(method, url, headers, body)
        if response.status == 401:
            response.close()
            if self._auth.scheme(ref.registry) == "basic":
                raise AuthenticationError(f"authentication to {ref.registry} failed: incorrect username or password")
            raise AuthenticationError(
                f"{ref.registry} denied {'push' if push else 'pull'} access to {ref.repository} with the token it issued")
        return response

    def _check(self, response: Response, ref: Reference, what: str, expect: tuple[int, ...] = (200,)) -> None:
        if response.status in expect:
            return
        detail = _error_detail(response)
        if response.status == 404:
            raise NotFoundError(f"{ref.familiar}: {what} not found{detail}")
        if response.status == 403:
            raise AuthenticationError(f"{ref.registry} denied access to {ref.repository}{detail}")
        raise RegistryError(f"{ref.registry}: {what} of {ref.familiar}: HTTP {response.status} {response.reason}{detail}")

    def _concurrently(self, jobs: list[Callable[[], None]]) -> None:
        """Run JOBS on a few threads; the first failure cancels the jobs not yet started."""
        if len(jobs) <= 1:
            for job in jobs:
                job()
            return
        from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

        with ThreadPoolExecutor(max_workers=min(_DOWNLOADS, len(jobs))) as pool:
            futures = [pool.submit(job) for job in jobs]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for future in pending:
                future.cancel()
        for future in futures:
            if not future.cancelled() and future.exception() is not None:
                raise future.exception()


class _FileRange:
    """LENGTH bytes of FILE from START, as a closable stream (the body of one PATCH)."""

    def __init__(self, file, start: int, length: int):
        self._file = file
        self._file.seek(start)
        self._left = length

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        data = self._file.read(self._left if n is None or n < 0 else min(n, self._left))
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "_FileRange":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _json(data: bytes, ref: Reference, what: str) -> dict:
    from builder.plumbing.canonical import json_object

    try:
        return json_object(data)
    except ValueError as error:
        raise RegistryError(f"{ref.familiar}: {what} is {error}") from None


def _media_type(content_type: str, data: bytes, ref: Reference) -> str:
    """The manifest's type: the Content-Type if specific, else what the document says it is."""
    served = content_type.split(";", 1)[0].strip()
    doc = _json(data, ref, "manifest")
    if served in _SCHEMA1_TYPES or doc.get("schemaVersion") == 1:
        raise UnsupportedMediaType(
            f"{ref.familiar}: Docker image manifest v2 schema 1 is deprecated and not supported; "
            "push the image again with a current Docker or BuildKit")
    if served in INDEX_TYPES or served in MANIFEST_TYPES:
        return served
    declared = doc.get("mediaType")
    if declared in INDEX_TYPES or declared in MANIFEST_TYPES:
        return declared
    if not declared and "manifests" in doc:
        return OCI_INDEX
    if not declared and "config" in doc and "layers" in doc:
        return OCI_MANIFEST
    raise UnsupportedMediaType(f"{ref.familiar}: unsupported manifest type {served or declared or 'unknown'!r}")


def _next_link(header: str, current: str) -> str:
    """The `rel="next"` target of a Link header (RFC 8288), resolved against CURRENT; "" if none."""
    for m in re.finditer(r'<([^>]*)>\s*((?:;\s*[^;,]*)*)', header):
        params = re.findall(r';\s*([\w-]+)\s*=\s*"?([^";,]*)"?', m.group(2))
        if any(key.lower() == "rel" and "next" in value.lower().split() for key, value in params):
            return urljoin(current, m.group(1))
    return ""


def _transfer_error(error: BaseException) -> str:
    if isinstance(error, http.client.IncompleteRead):
        return "the connection was cut before the end of the blob"
    if isinstance(error, TransferStalled):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__


def _read_limited(response: Response, limit: int, what: str) -> bytes:
    length = response.header("Content-Length")
    if length.isdigit() and int(length) > limit:
        response.close()
        raise RegistryError(f"{what} is {length} bytes, more than the {limit} allowed")
    chunks, total = [], 0
    for chunk in response.iter_chunks(64 << 10):
        total += len(chunk)
        if total > limit:
            raise RegistryError(f"{what} is more than the {limit} bytes allowed")
        chunks.append(chunk)
    return b"".join(chunks)


def _error_detail(response: Response) -> str:
    """The registry's own error codes and messages, if its body is the spec's error JSON."""
    try:
        body = response.read()[:65536] if response.header("Content-Length") != "0" else b""
        errors = json.loads(body).get("errors") or []
        parts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors if isinstance(e, dict)]
    except Exception:  # an unreadable error body only loses detail, never the error itself
        return ""
    return f" ({'; '.join(parts)})" if parts else ""
