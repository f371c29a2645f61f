"""`build-image diff A B`: every kind of source, the config diff, files per layer and flattened."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from builder.cache.blobs import MemoryBlobStore
from types import SimpleNamespace

from builder.lifecycle.diff import compare_entries, flattened, layer_entries
from builder.store import Store
from tests.support.images import build_image, write_context


def _tar_blob(blobs, entries) -> str:
    """A layer blob from (name, data or None for a dir, fields) triples, in the order given."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data, fields in entries:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE if data is None else tarfile.REGTYPE
            info.size = len(data or b"")
            for key, value in fields.items():
                setattr(info, key, value)
            tf.addfile(info, io.BytesIO(data or b""))
    with blobs.writer() as writer:
        writer.write(out.getvalue())
        return writer.commit()


def test_each_field_of_a_changed_entry_is_named(tmp_path):
    store = Store(str(tmp_path / "store"), blobs=MemoryBlobStore())
    a = _tar_blob(store.blobs, [("etc", None, {"mode": 0o755}), ("etc/a", b"one", {"mode": 0o644, "mtime": 1}),
                                ("etc/b", b"same", {}), ("etc/gone", b"x", {})])
    b = _tar_blob(store.blobs, [("etc", None, {"mode": 0o755}), ("etc/b", b"same", {}),
                                ("etc/a", b"two", {"mode": 0o600, "mtime": 2, "uid": 7,
                                                   "pax_headers": {"SCHILY.xattr.user.k": "v"}}),
                                ("etc/new", b"n", {})])
    changes = {c.path: c for c in compare_entries(layer_entries(store, a), layer_entries(store, b))}
    assert changes["/etc/gone"].change == "removed" and changes["/etc/new"].change == "added"
    fields = {f.field: (f.a, f.b) for f in changes["/etc/a"].fields}
    assert set(fields) == {"digest", "mode", "uid", "mtime", "xattrs", "order"}
    assert fields["mode"] == ("0644", "0600") and fields["mtime"] == (1, 2) and fields["xattrs"] == ({}, {"user.k": "v"})
    assert changes["/etc/b"].fields[0].field == "order" and "/etc" not in changes


def test_flattening_applies_whiteouts_and_opaque_dirs_and_keeps_dotfiles(tmp_path):
    store = Store(str(tmp_path / "store"), blobs=MemoryBlobStore())
    lower = _tar_blob(store.blobs, [("./etc", None, {}), ("./etc/.hidden", b"h", {}), ("./etc/gone", b"g", {}),
                                    ("./opt", None, {}), ("./opt/old", b"o", {}), ("./opt/sub", None, {}),
                                    ("./opt/sub/deep", b"d", {})])
    upper = _tar_blob(store.blobs, [("./etc/.wh.gone", b"", {}), ("./opt", None, {}),
                                    ("./opt/.wh..wh..opq", b"", {}), ("./opt/new", b"n", {})])
    image = SimpleNamespace(layers=[SimpleNamespace(digest=lower), SimpleNamespace(digest=upper)])
    assert sorted(flattened(store, image)) == ["/etc", "/etc/.hidden", "/opt", "/opt/new"]


@pytest.fixture
def two_images(tmp_path, busybox_registry, store_root):
    """Images `diff-a` and `diff-b` in STORE_ROOT, A also as an OCI archive, a docker archive and
    an OCI layout directory: B changes a copied file, removes one, and adds a RUN's output."""
    outputs = {}
    for name, text, extra in (("a", "one\n", ""), ("b", "two\n", "RUN rm /keep/gone && echo made > /made\n")):
        context = write_context(tmp_path / f"ctx-{name}", {
            "Dockerfile": f"FROM {busybox_registry.reference}\nCOPY data.txt gone /keep/\nENV SIDE={name}\n{extra}",
            "data.txt": text, "gone": "bye\n"})
        args = ["--root", store_root, "-t", f"diff-{name}", "--build-arg", "SOURCE_DATE_EPOCH=1700000000", context]
        if name == "a":
            outputs = {"oci": tmp_path / "a-oci.tar", "docker": tmp_path / "a-docker.tar", "layout": tmp_path / "a-layout"}
            args = ["-o", f"type=oci,dest={outputs['oci']}", "-o", f"type=docker,dest={outputs['docker']}",
                    "-o", f"type=oci,tar=false,dest={outputs['layout']}", *args]
        build_image(*args)
    return outputs


def diff(store_root, *args, code):
    proc = build_image("diff", "--root", store_root, *args, check=False)
    assert proc.returncode == code, proc.stderr
    return proc.stdout


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_local_images_by_name_layer_by_layer(store_root, two_images):
    out = diff(store_root, "diff-a", "diff-b", code=1)
    assert "config:\n" in out and '  config.Env[1]: "SIDE=a" -> "SIDE=b"' in out
    layer1 = out[out.index("layer 1 (COPY data.txt gone /keep/"):]
    assert "  changed /keep/data.txt: digest sha256:" in layer1
    assert "layer 2 (RUN /bin/sh -c rm /keep/gone && echo made > /made # buildkit): (none) -> sha256:" in out
    assert "  added /keep/.wh.gone" in out and "  added /made" in out
    assert "layer 0" not in out                     # the shared base layer is not reported


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_the_same_image_from_two_archive_kinds_and_an_id_is_identical(store_root, two_images):
    image_id = build_image("inspect", "--root", store_root, "-f", "{{.Id}}", "diff-a").stdout.strip()
    out = diff(store_root, f"oci-archive:{two_images['oci']}", f"docker-archive:{two_images['docker']}", code=0)
    assert out.splitlines()[-1] == "identical" and image_id in out
    assert diff(store_root, image_id[7:19], f"oci:{two_images['layout']}:latest", code=0).endswith("identical\n")


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_json_report_from_a_layout_against_a_local_name(store_root, two_images):
    report = json.loads(diff(store_root, "--format", "json", f"oci:{two_images['layout']}", "diff-b", code=1))
    assert report["identical"] is False and report["a"]["source"] == f"oci:{two_images['layout']}"
    by_index = {layer["index"]: layer for layer in report["layers"]}
    assert sorted(by_index) == [1, 2]
    [data] = [f for f in by_index[1]["files"] if f["path"] == "/keep/data.txt"]
    assert [f["field"] for f in data["fields"]] == ["digest"]
    config = {c["field"]: (c["a"], c["b"]) for c in report["config"]}
    assert config["rootfs.diff_ids[2]"][0] is None and config["rootfs.diff_ids[2]"][1].startswith("sha256:")
    assert config["config.Env[1]"] == ("SIDE=a", "SIDE=b")


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_flattened_against_a_registry_image(store_root, two_images, busybox_registry):
    pushed = f"{busybox_registry.host}/diff-b:1"
    build_image("tag", "--root", store_root, "diff-b", pushed)
    build_image("push", "--root", store_root, pushed)
    out = diff(store_root, "--flatten", "diff-a", f"docker://{pushed}", code=1)
    assert "file system (flattened)" in out
    assert "  removed /keep/gone" in out and "  added /made" in out and ".wh." not in out
    assert "  changed /keep/data.txt: digest" in out


def test_an_unreadable_source_is_one_error_line(store_root, tmp_path):
    proc = build_image("diff", "--root", store_root, f"oci-archive:{tmp_path}/missing.tar", "x", check=False)
    assert proc.returncode == 1 and proc.stderr == f"ERROR: oci-archive:{tmp_path}/missing.tar: no such file\n"
    proc = build_image("diff", "--root", store_root, "nope:1", "nope:2", check=False)
    assert proc.returncode == 1 and proc.stderr == "ERROR: No such image: nope:1\n"


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_a_layout_tag_that_is_not_there_is_an_error(store_root, two_images):
    proc = build_image("diff", "--root", store_root, f"oci:{two_images['layout']}:v9", "diff-a", check=False)
    assert proc.returncode == 1 and proc.stderr.endswith("a-layout:v9: no image tagged 'v9' in the layout\n")
