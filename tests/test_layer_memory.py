"""Committing and exporting a 1 GB layer streams: the process's peak RSS stays under 150 MB.

The work runs in a child process, which reports its own peak resident set (VmHWM in
/proc/self/status) when it is done: the test runner's memory is not counted. The 1 GB file is sparse so that the
test writes little of its own; the layer tar (hashed at commit, made again from the snapshot for
the export) and its gzip are real.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

LIMIT_KIB = 150 * 1024

_CHILD = textwrap.dedent("""
    import os, sys
    from builder.image.media import Descriptor, OCI_LAYER
    from builder.snapshot.backed import LayerSource
    from builder.snapshot.compressed import Compression, compressed_blob
    from builder.snapshot.layers import chain_ids, hash_layer
    from builder.store import Store

    root, upper = sys.argv[1], sys.argv[2]
    store = Store(root)
    scratch = store.snapshots.scratch()   # a build step's upper dir, as the overlay snapshotter makes it
    upper = scratch.upperdir
    with open(os.path.join(upper, "big"), "wb") as f:
        f.truncate(1 << 30)
        f.seek(123_456_789)
        f.write(os.urandom(4 << 20))   # some data that does not compress to nothing
    # The build's commit: hash the tar, commit the upper dir as the snapshot, record the layer.
    made = hash_layer(upper)
    chain = chain_ids([made.diff_id])[-1]
    store.snapshots.commit(scratch, chain)
    store.blobs.back(made.diff_id, LayerSource(chain, None, made.size))
    assert not store.blobs.inner.has(made.diff_id) and store.blobs.size(made.diff_id) > 1 << 30
    # The export: the tar made again from the snapshot, checked, and gzip-compressed.
    gz = compressed_blob(store, Descriptor(OCI_LAYER, made.diff_id, made.size), made.diff_id,
                         Compression("gzip"))
    assert gz.size < 8 << 20
    with open("/proc/self/status") as f:
        peak_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    print(made.diff_id, gz.digest, peak_kib)
""")


@pytest.mark.slow
def test_commit_and_export_of_a_1gb_layer_keep_peak_rss_under_150mb(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "store"), str(tmp_path / "upper")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    diff_id, gz, peak = proc.stdout.split()
    assert diff_id.startswith("sha256:") and gz.startswith("sha256:") and gz != diff_id
    assert 0 < int(peak) < LIMIT_KIB, f"peak RSS {int(peak) // 1024} MB"
