"""User-level operations over the store (dulwich's `porcelain` over its plumbing).

    inventory     which images the store holds; finding one by name or ID as docker does
    filters       `images --filter`: dangling, label, reference, before, since
    tagging       tag, rmi
    describe      inspect, history
    archive       save, load (docker-archive and OCI image-layout tars)
    rootfs        import (a root filesystem tar -> image), export (image -> flat tar)
    distribution  pull (one tag or --all-tags), push, login, logout
    gc            prune, df, fsck
    layertar      reading layer tars: decompression and content sizes
    diff          diff: two images from any source, config and files compared

Each operation takes a `builder.store.Store` (not yet locked) and takes the root's lock itself:
shared for what only adds, exclusive for what deletes. Results are frozen dataclasses; printing
is the CLI's business (builder/cli/images.py).
"""
