"""`pull`, `push`, `login` and `logout`: the store and registries.

A pulled image is named by its tag and by its repo digest (`name@sha256:...`), as docker records
both; a pushed one gains the repo digest too. Those repo digests are also how a push knows that a
blob is already in another repository of the same registry, so it can ask for a cross-repository
mount instead of uploading the blob again.
"""

from __future__ import annotations

from builder.plumbing import records
import json
import threading
from builder.plumbing.records import dataclass
from typing import Callable, Sequence

from builder.errors import BuildError, ImageNotFound, StoreError
from builder.image.manifest import for_output, read_image
from builder.image.media import Platform, is_oci_type
from builder.registry.auth import (CredentialStore, Credentials, erase_credentials, registry_host,
                                   save_credentials)
from builder.registry.reference import Reference, parse_reference
from builder.store import Store


@dataclass(frozen=True)
class LayerEvent:
    digest: str
    status: str          # docker's words: "Pulling fs layer", "Already exists", "Download complete",
                         # "Pull complete", "Preparing", "Pushed", "Layer already exists", "Mounted from R"


LayerEvents = Callable[[LayerEvent], None]


@dataclass(frozen=True)
class PullResult:
    reference: Reference
    manifest_digest: str
    image_id: str
    up_to_date: bool     # the name already pointed at this image and every blob was here


@dataclass(frozen=True)
class PushResult:
    reference: Reference
    manifest_digest: str
    manifest_size: int


def pull(store: Store, name: str, *, platform: Platform = Platform(), insecure_registries: Sequence[str] = (),
         events: LayerEvents = lambda event: None) -> PullResult:
    """Fetch NAME's image for PLATFORM into the store and name it."""
    from builder.registry.client import RegistryClient

    ref = parse_reference(name)
    completed: set[str] = set()
    lock = threading.Lock()

    def progress(digest: str, done: int, total: int) -> None:
        with lock:
            if done >= total and digest not in completed:
                completed.add(digest)
                events(LayerEvent(digest, "Download complete"))

    with store, RegistryClient(insecure_registries=insecure_registries, progress=progress) as client:
        previous = store.images.resolve(str(ref))
        digest, manifest, _ = client.resolve(ref, platform)
        pinned = ref.with_digest(digest)
        layers = _layer_digests(manifest)
        present = {d for d in layers if store.blobs.has(d)}
        for layer in layers:
            events(LayerEvent(layer, "Already exists" if layer in present else "Pulling fs layer"))
        pulled = client.pull(pinned, store.blobs, platform)
        for layer in layers:
            if layer not in present:
                events(LayerEvent(layer, "Pull complete"))
        image = read_image(store.blobs, pulled.manifest_digest)
        if ref.tag and not ref.digest:
            store.images.tag(str(ref), pulled.manifest_digest)
        store.images.tag(f"{ref.name}@{pulled.manifest_digest}", pulled.manifest_digest)
        up_to_date = previous == pulled.manifest_digest and len(present) == len(layers)
        return PullResult(ref, pulled.manifest_digest, image.image_id, up_to_date)


@dataclass(frozen=True)
class TagPull:
    result: PullResult
    layers: tuple[LayerEvent, ...]   # each layer's outcome: "Already exists" or "Pull complete"


@dataclass(frozen=True)
class AllTagsPull:
    repository: Reference            # the repository, without a tag
    tags: tuple[TagPull, ...]        # in the registry's order

    @property
    def up_to_date(self) -> bool:
        return all(t.result.up_to_date for t in self.tags)


def pull_all_tags(store: Store, name: str, *, platform: Platform = Platform(),
                  insecure_registries: Sequence[str] = (), page_size: int | None = None) -> AllTagsPull:
    """`docker pull --all-tags NAME`: every tag the registry lists for NAME's repository, for
    PLATFORM. Tags are resolved concurrently, then the blobs of all of them are fetched once each,
    a few at a time; the first tag that fails stops the pull, as in docker."""
    from concurrent.futures import ThreadPoolExecutor

    from builder.registry.client import RegistryClient

    if _names_tag_or_digest(name):
        raise BuildError("tag can't be used with --all-tags/-a")
    repository = records.replace(parse_reference(name), tag=None, digest=None)
    with store, RegistryClient(insecure_registries=insecure_registries) as client:
        tags = client.list_tags(repository, page_size)
        refs = [records.replace(repository, tag=tag) for tag in tags]
        previous = {str(ref): store.images.resolve(str(ref)) for ref in refs}
        with ThreadPoolExecutor(max_workers=_RESOLVERS) as pool:
            manifests = list(pool.map(lambda ref: client.resolve(ref, platform), refs))
        present = {d for _, manifest, _ in manifests for d in _blob_descriptors(manifest) if store.blobs.has(d)}
        wanted = {d: desc for _, manifest, _ in manifests for d, desc in _blob_descriptors(manifest).items()}
        client.fetch_blobs(repository, [desc for d, desc in wanted.items() if d not in present], store.blobs)
        pulls = []
        for ref, (digest, manifest, _) in zip(refs, manifests):
            layers = _layer_digests(manifest)
            events = tuple(LayerEvent(d, "Already exists" if d in present else "Pull complete") for d in layers)
            fresh = not all(d in present for d in _blob_descriptors(manifest))
            present.update(_blob_descriptors(manifest))
            pulled = client.pull(ref.with_digest(digest), store.blobs, platform)  # every blob is here now
            store.images.tag(str(ref), pulled.manifest_digest)
            store.images.tag(f"{ref.name}@{pulled.manifest_digest}", pulled.manifest_digest)
            image = read_image(store.blobs, pulled.manifest_digest)
            up_to_date = previous[str(ref)] == pulled.manifest_digest and not fresh
            pulls.append(TagPull(PullResult(ref, pulled.manifest_digest, image.image_id, up_to_date), events))
        return AllTagsPull(repository, tuple(pulls))


_RESOLVERS = 3


def _names_tag_or_digest(name: str) -> bool:
    last = name.rpartition("/")[2]
    return ":" in last or "@" in last


def _blob_descriptors(manifest: bytes) -> dict:
    """Digest -> Descriptor of a manifest's config and layers."""
    from builder.image.media import Descriptor

    try:
        doc = json.loads(manifest)
        descs = [Descriptor.from_json(doc["config"])] + [Descriptor.from_json(d) for d in doc.get("layers") or ()]
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}  # the client's pull reports a malformed manifest properly
    return {d.digest: d for d in descs}


def _layer_digests(manifest: bytes) -> list[str]:
    try:
        doc = json.loads(manifest)
        return list(dict.fromkeys(layer["digest"] for layer in doc.get("layers") or ()))
    except (ValueError, KeyError, TypeError, AttributeError):
        return []  # the client's pull reports a malformed manifest properly


def push(store: Store, name: str, *, insecure_registries: Sequence[str] = (),
         events: LayerEvents = lambda event: None) -> PushResult:
    """Upload the image named NAME to NAME's registry and repository."""
    from builder.registry.client import RegistryClient

    ref = parse_reference(name)
    with store:
        manifest_digest = store.images.resolve(str(ref))
        if manifest_digest is None:
            raise ImageNotFound(f"An image does not exist locally with the tag: {ref.familiar}")
        from builder.image.media import Descriptor
        from builder.snapshot.compressed import image_with_layers, layers_for_push

        image = read_image(store.blobs, manifest_digest)
        # Layers the build committed uncompressed go gzip-compressed, as docker push sends them:
        # compressed on the way up (and kept, so the next push sends a known blob, HEAD first);
        # pulled layers and ones compressed before go as they are.
        layers = layers_for_push(store, image)
        mount_from = _mount_sources(store, ref)
        # Progress is shown per layer by its diff_id, as docker push does: the blob digest of a
        # layer compressed on the way is known only once it is sent.
        diff_id_of = {l.digest: d for l, d in zip(layers, image.config.diff_ids) if isinstance(l, Descriptor)}

        def status(digest: str, what: str) -> None:
            diff_id = diff_id_of.get(digest) or next(
                (v_diff for v_diff in image.config.diff_ids
                 if any(v.digest == digest for v in store.variants.of(v_diff))), None)
            if diff_id is not None:
                words = {"exists": "Layer already exists", "pushed": "Pushed"}
                events(LayerEvent(diff_id, words.get(what) or f"Mounted from {mount_from.get(digest, '')}"))

        for diff_id in dict.fromkeys(image.config.diff_ids):
            events(LayerEvent(diff_id, "Preparing"))
        # The image keeps its family (a pulled Docker image goes back as it came, with the same digest);
        # an OCI manifest is pushed with OCI types throughout, whatever its base layers were tagged with.
        oci = is_oci_type(image.manifest.media_type)
        sent: list[bytes] = []

        def manifest_for(final: list[Descriptor]) -> tuple[bytes, str]:
            out = for_output(store.blobs, image_with_layers(store, image, final), oci=oci)
            sent.append(out.data)
            return out.data, out.image.manifest.media_type

        with RegistryClient(insecure_registries=insecure_registries, blob_status=status) as client:
            pushed, _ = client.push_streamed(ref, store.blobs, image.config_descriptor, layers, manifest_for,
                                             mount_from)
        store.images.tag(f"{ref.name}@{pushed}", manifest_digest)
        return PushResult(ref, pushed, len(sent[0]))


def _mount_sources(store: Store, ref: Reference) -> dict[str, str]:
    """Blob digest -> another repository of REF's registry known to hold it: the repositories this
    store pulled from or pushed to (its repo digests)."""
    sources: dict[str, str] = {}
    for name, digest in store.images.list():
        if "@" not in name:
            continue
        other = parse_reference(name)
        if other.registry != ref.registry or other.repository == ref.repository:
            continue
        try:
            image = read_image(store.blobs, digest)
        except StoreError:  # an unreadable image only loses a mount
            continue
        for blob in (image.config_descriptor, *image.layers):
            sources.setdefault(blob.digest, other.repository)
        for diff_id in image.config.diff_ids:  # what was pushed of a layer kept uncompressed here
            for variant in store.variants.of(diff_id):
                sources.setdefault(variant.digest, other.repository)
    return sources


@dataclass(frozen=True)
class LoginResult:
    registry: str
    saved_to: str        # the config file, or the credential helper's program name


def login(server: str, username: str, password: str, *, insecure_registries: Sequence[str] = ()) -> LoginResult:
    """Check USERNAME and PASSWORD against SERVER's registry, then keep them as docker login does."""
    from builder.registry.client import RegistryClient

    registry = registry_host(server)
    credentials = Credentials(username, password)
    store = CredentialStore(explicit={registry: credentials})
    with RegistryClient(insecure_registries=insecure_registries, credentials=store, timeout=15.0) as client:
        client.ping(registry)
    return LoginResult(registry, save_credentials(registry, credentials))


def logout(server: str) -> tuple[str, bool]:
    """Forget SERVER's credentials; (registry, whether there were any)."""
    registry = registry_host(server)
    return registry, erase_credentials(registry)
