"""The build cache shared across machines: `--cache-to` and `--cache-from` (BuildKit's remotecache).

    spec.py      the flag values, checked before anything is built
    format.py    BuildKit's cache config (application/vnd.buildkit.cacheconfig.v0)
    exporter.py  steps -> cache config -> a registry manifest, an OCI layout, or the image config
    importer.py  a registry ref, an OCI layout or an image -> records the solver looks its keys up in,
                 blobs fetched and verified only for the steps that hit
"""
