"""Naming and removing images: `tag` and `rmi` with docker's rules.

`rmi NAME` removes that name; the image itself goes only when no name is left. `rmi ID` removes
every name of the image, but refuses (unless forced) when they span several repositories, as
docker does. Deleting an image deletes its manifest, then whichever of its config, layers and
snapshots no other image (named or dangling) and no build cache record still uses. Deleting holds
the root exclusively, so `rmi` waits for running builds rather than pull blobs from under them.
"""

from __future__ import annotations


from builder.errors import BuildError, StoreError
from builder.plumbing.records import dataclass
from builder.registry.reference import InvalidReference, parse_reference
from builder.store import Store

from .inventory import ImageRecord, familiar, find_image, list_images


class ImageConflict(StoreError):
    """An image that cannot be removed without --force."""


@dataclass(frozen=True)
class Removal:
    untagged: tuple[str, ...]        # familiar names, in the order they were removed
    deleted: tuple[str, ...]         # image IDs (config digests) whose image was deleted


def tag_image(store: Store, source: str, target: str) -> str:
    """Point TARGET at SOURCE's image; returns TARGET normalised."""
    with store:
        record = find_image(store, source)
        ref = parse_reference(target)
        if ref.digest:
            raise StoreError(f"refusing to create a tag with a digest reference: {target}")
        store.images.tag(str(ref), record.manifest_digest)
        return str(ref)


def remove_image(store: Store, name: str, *, force: bool = False) -> Removal:
    """`docker rmi NAME`: untag, and delete the image once nothing names it."""
    with store.exclusive():
        record = find_image(store, name)
        by_name = _stored_name(store, name, record)
        untagged: list[str] = []
        if by_name is not None:
            _untag(store, by_name, untagged)
            remaining = store.images.names_for(record.manifest_digest)
            if "@" not in by_name:
                # A tag removed while only digest references of its repository remain: those go
                # too (they would otherwise keep the image alive under no usable name).
                repo = by_name.rpartition(":")[0]
                same_repo = [n for n in remaining if _repository(n) == repo]
                if same_repo and all("@" in n for n in same_repo):
                    for n in same_repo:
                        _untag(store, n, untagged)
            if store.images.names_for(record.manifest_digest):
                return Removal(tuple(untagged), ())
        elif record.names:
            repositories = {_repository(n) for n in record.names}
            if len(repositories) > 1 and not force:
                raise ImageConflict(f"conflict: unable to delete {short_id(record.image_id)} (must be forced) - "
                                    "image is referenced in multiple repositories")
            for n in record.tags + record.digests:
                _untag(store, n, untagged)
        delete_image_content(store, record)
        return Removal(tuple(untagged), (record.image_id,))


def remove_images(store: Store, names: list[str], *, force: bool = False
                  ) -> list[tuple[str, Removal | BuildError]]:
    """remove_image for each name; a failure is reported in place and the rest still run."""
    results: list[tuple[str, Removal | BuildError]] = []
    for name in names:
        try:
            results.append((name, remove_image(store, name, force=force)))
        except BuildError as error:
            results.append((name, error))
    return results


def short_id(image_id: str) -> str:
    return image_id.partition(":")[2][:12]


def _stored_name(store: Store, name: str, record: ImageRecord) -> str | None:
    """The index entry NAME is, if it names the image by reference rather than by ID."""
    try:
        ref = str(parse_reference(name))
    except InvalidReference:
        return None
    return ref if store.images.resolve(ref) == record.manifest_digest else None


def _repository(name: str) -> str:
    """`registry/repo` of a stored name (`registry/repo:tag` or `registry/repo@digest`)."""
    if "@" in name:
        return name.partition("@")[0]
    return name.rpartition(":")[0]


def _untag(store: Store, name: str, untagged: list[str]) -> None:
    if store.images.untag(name) is not None:
        untagged.append(familiar(name))


def delete_image_content(store: Store, record: ImageRecord) -> None:
    """Delete RECORD's manifest, and its config, layers and snapshots unless something else uses
    them. The caller holds the root exclusively."""
    from builder.snapshot.layers import chain_ids

    others = [r for r in list_images(store) if r.manifest_digest != record.manifest_digest]
    in_use = {d for r in others for d in (r.image.config_descriptor.digest, *(l.digest for l in r.image.layers))}
    in_use |= cached_layer_digests(store)
    store.blobs.delete(record.manifest_digest)
    for desc in (record.image.config_descriptor, *record.image.layers):
        if desc.digest not in in_use:
            store.blobs.delete(desc.digest)
    kept_snapshots = {store.snapshot_key(c) for r in others for c in chain_ids(r.image.config.diff_ids)}
    kept_snapshots |= store.backing_snapshot_keys()  # a layer still kept (cached) is made from its snapshot
    for chain_id in chain_ids(record.image.config.diff_ids):
        key = store.snapshot_key(chain_id)
        if key not in kept_snapshots:
            store.remove_snapshot(key)


def cached_layer_digests(store: Store) -> set[str]:
    """Layer blobs the build cache records point at."""
    found = set()
    for key in store.records.keys():
        record = store.records.get(key)
        if record is not None:
            found.add(record.layer_digest)
    return found
