"""Layers are committed uncompressed; outputs compress them when they need to, once per
(diff_id, compression, level): BuildKit's lazy blobs and its `compression=` output attributes."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile

import pytest

from builder import BuildOptions, build
from builder.errors import BuildError
from builder.image.manifest import read_image, write_image
from builder.image.config import ImageConfig
from builder.image.media import OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, Descriptor
from builder.pipeline import OutputSpec
from builder.plumbing import compression
from builder.snapshot.compressed import Compression, compressed_blob, compressed_image
from builder.store import Store
from tests.support.images import skopeo_inspect, write_context


class CompressorCount:
    """How many compressors were made, by kind (every gzip or zstd blob is written through one)."""

    def __init__(self, monkeypatch):
        self.kinds: list[str] = []
        real = compression.Compressor.__init__

        def counting(compressor, kind, level=None):
            self.kinds.append(kind)
            real(compressor, kind, level)

        monkeypatch.setattr(compression.Compressor, "__init__", counting)


def _archive(path: str) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _archive_layers(path: str) -> list[dict]:
    files = _archive(path)
    [entry] = json.loads(files["index.json"])["manifests"]
    return json.loads(files["blobs/sha256/" + entry["digest"][7:]])["layers"]


def _store_with_one_layer(root: str, data: bytes) -> tuple[Store, Descriptor, str]:
    """A store holding one uncompressed layer (a tar of one file of DATA), as a build commits it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("data")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    store = Store(root)
    digest = store.blobs.put_bytes(buf.getvalue())
    return store, Descriptor(OCI_LAYER, digest, len(buf.getvalue())), digest


# --- the snapshot-side function a remote cache uses too -------------------------------------------


def test_compressed_blob_is_made_once_per_compression_and_level(tmp_path, monkeypatch):
    store, layer, diff_id = _store_with_one_layer(str(tmp_path / "store"), b"hello layer\n" * 5000)
    count = CompressorCount(monkeypatch)
    first = compressed_blob(store, layer, diff_id, Compression("gzip"))
    assert first.media_type == OCI_LAYER_GZIP and first.digest != diff_id
    blob = store.blobs.get_bytes(first.digest)
    assert len(blob) == first.size and blob[:2] == b"\x1f\x8b"
    assert gzip.decompress(blob) == store.blobs.get_bytes(diff_id)
    assert compressed_blob(store, layer, diff_id, Compression("gzip")) == first
    assert compressed_blob(store, layer, diff_id, Compression("gzip", compression.GZIP_DEFAULT_LEVEL)) == first
    assert count.kinds == ["gzip"]  # the second and third asked of the variants record
    nine = compressed_blob(store, layer, diff_id, Compression("gzip", 9))
    zstd = compressed_blob(store, layer, diff_id, Compression("zstd"))
    assert nine.digest not in (first.digest, diff_id) and zstd.media_type == OCI_LAYER_ZSTD
    assert count.kinds == ["gzip", "gzip", "zstd"]
    # a second store's gzip of the same tar at the same level is the same bytes (reproducible digests)
    other, other_layer, _ = _store_with_one_layer(str(tmp_path / "other"), b"hello layer\n" * 5000)
    assert compressed_blob(other, other_layer, diff_id, Compression("gzip")) == first


def test_compressed_blob_keeps_other_compressions_unless_forced(tmp_path):
    store, layer, diff_id = _store_with_one_layer(str(tmp_path / "store"), os.urandom(50_000))
    gz = compressed_blob(store, layer, diff_id, Compression("gzip"))
    # zstd asked of a gzip layer (a base image's, say): kept, as BuildKit does without force
    assert compressed_blob(store, gz, diff_id, Compression("zstd")) == gz
    assert compressed_blob(store, gz, diff_id, Compression("uncompressed")) == gz
    forced = compressed_blob(store, gz, diff_id, Compression("zstd", force=True))
    assert forced.media_type == OCI_LAYER_ZSTD
    plain = compressed_blob(store, gz, diff_id, Compression("uncompressed", force=True))
    assert plain == Descriptor(OCI_LAYER, diff_id, layer.size)


def test_a_corrupt_stored_tar_is_not_compressed_into_a_good_looking_blob(tmp_path):
    store, layer, diff_id = _store_with_one_layer(str(tmp_path / "store"), b"x" * 10_000)
    with open(store.blobs.path(diff_id), "r+b") as f:
        f.seek(600)
        f.write(b"y")
    with pytest.raises(BuildError, match="does not match|corrupt"):
        compressed_blob(store, layer, diff_id, Compression("gzip"))
    assert store.variants.get(diff_id, "gzip", compression.GZIP_DEFAULT_LEVEL) is None


def test_compressed_image_keeps_the_image_id_and_compresses_layers_in_parallel(tmp_path, monkeypatch):
    store, layer, diff_id = _store_with_one_layer(str(tmp_path / "store"), b"one\n" * 4000)
    second = _store_with_one_layer(str(tmp_path / "store"), b"two\n" * 4000)[1]
    config = ImageConfig(architecture="amd64", os="linux", diff_ids=(diff_id, second.digest))
    image = write_image(store.blobs, config, [layer, second], annotations={"org.example.a": "1"})
    threads = set()
    real = compressed_blob.__globals__["_compress"]

    def recording(*args):
        import threading

        threads.add(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr("builder.snapshot.compressed._compress", recording)
    out = compressed_image(store, image, Compression("gzip"), jobs=2)
    assert out.image_id == image.image_id and out.manifest.digest != image.manifest.digest
    assert [l.media_type for l in out.layers] == [OCI_LAYER_GZIP, OCI_LAYER_GZIP]
    assert len(threads) == 2 and all(name.startswith("compress") for name in threads)
    doc = json.loads(store.blobs.get_bytes(out.manifest.digest))
    assert doc["annotations"] == {"org.example.a": "1"}
    assert read_image(store.blobs, out.manifest.digest).config.diff_ids == config.diff_ids
    assert compressed_image(store, image, Compression("uncompressed")) == image


# --- output attributes ---------------------------------------------------------------------------


@pytest.mark.parametrize("text,message", [
    ("type=oci,dest=o.tar,compression=lz4", "unknown compression 'lz4'"),
    ("type=oci,dest=o.tar,compression=gzip,compression-level=10", "out of range for gzip"),
    ("type=docker,dest=o.tar,compression-level=fast", "compression-level must be a number"),
    ("type=oci,dest=o.tar,force-compression=maybe", "force-compression must be true or false"),
    ("type=local,dest=d,compression=gzip", "unknown attribute compression= for type=local"),
    ("type=oci,dest=o.tar,compresion=gzip", "unknown attribute compresion="),
])
def test_bad_compression_attributes_are_refused(text, message):
    with pytest.raises(BuildError, match=message):
        OutputSpec.parse(text)


def test_compression_attributes_parse_as_buildkit_names_them():
    spec = OutputSpec.parse("type=image,name=r/app,push=true,compression=zstd,compression-level=19,force-compression=true")
    assert spec.compression == Compression("zstd", 19, True)
    assert OutputSpec.parse("type=oci,dest=o.tar").compression == Compression("gzip", None, False)


# --- whole builds --------------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_a_tagged_build_compresses_nothing_and_an_export_compresses_each_layer_once(
        tmp_path, store_root, busybox_registry, monkeypatch):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN head -c 300000 /dev/urandom > /random && echo text > /text
COPY Dockerfile /copied
"""})
    count = CompressorCount(monkeypatch)
    build(BuildOptions(context=context, root=store_root, tags=("app:1",)))
    assert count.kinds == []
    store = Store(store_root)
    image = read_image(store.blobs, store.images.resolve("docker.io/library/app:1"))
    built = image.layers[-2:]
    assert [l.media_type for l in built] == [OCI_LAYER, OCI_LAYER]
    assert [l.digest for l in built] == list(image.config.diff_ids[-2:])  # the blob is the tar itself

    first, second = str(tmp_path / "one.tar"), str(tmp_path / "two.tar")
    build(BuildOptions(context=context, root=store_root, tags=("app:1",), outputs=(f"type=oci,dest={first}",)))
    assert count.kinds == ["gzip", "gzip"]  # the two new layers; busybox's are gzip already
    build(BuildOptions(context=context, root=store_root, tags=("app:1",), outputs=(f"type=oci,dest={second}",)))
    assert count.kinds == ["gzip", "gzip"]  # cached per (diff_id, gzip, level): nothing again
    assert open(first, "rb").read() == open(second, "rb").read()
    assert {l["mediaType"] for l in _archive_layers(first)} == {OCI_LAYER_GZIP}
    info = skopeo_inspect(f"oci-archive:{first}")
    assert len(info["Layers"]) == len(image.layers)


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
@pytest.mark.tools
def test_zstd_uncompressed_and_forced_outputs(tmp_path, store_root, busybox_registry):
    context = write_context(tmp_path / "ctx", {"Dockerfile": f"""\
FROM {busybox_registry.reference}
RUN echo made > /made
"""})
    outs = {name: str(tmp_path / f"{name}.tar") for name in ("zstd", "plain", "forced", "docker")}
    result = build(BuildOptions(context=context, root=store_root, outputs=(
        f"type=oci,dest={outs['zstd']},compression=zstd,compression-level=5",
        f"type=oci,dest={outs['plain']},compression=uncompressed",
        f"type=oci,dest={outs['forced']},compression=zstd,force-compression=true",
        f"type=docker,dest={outs['docker']},compression=uncompressed")))
    zstd, plain, forced = (_archive_layers(outs[n]) for n in ("zstd", "plain", "forced"))
    assert [l["mediaType"] for l in zstd] == [OCI_LAYER_GZIP, OCI_LAYER_ZSTD]  # base kept: not forced
    assert [l["mediaType"] for l in plain] == [OCI_LAYER_GZIP, OCI_LAYER]
    assert [l["mediaType"] for l in forced] == [OCI_LAYER_ZSTD, OCI_LAYER_ZSTD]
    assert zstd[1]["digest"] != forced[1]["digest"]  # level 5 against the default 3
    for name in ("zstd", "plain", "forced"):
        info = skopeo_inspect(f"oci-archive:{outs[name]}")
        assert info["Digest"] != "" and len(info["Layers"]) == 2
    files = _archive(outs["docker"])
    [entry] = json.loads(files["manifest.json"])
    assert entry["Config"] == "blobs/sha256/" + result.image_id[7:]
    # every layer in the docker archive is what its manifest entry names; the new one is a plain tar
    assert tarfile.open(fileobj=io.BytesIO(files[entry["Layers"][-1]])).getnames() == ["made"]


# --- pushes --------------------------------------------------------------------------------------


def _uncompressed_image(store: Store, data: bytes):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("data")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    digest = store.blobs.put_bytes(buf.getvalue())
    config = ImageConfig(architecture="amd64", os="linux", diff_ids=(digest,))
    return write_image(store.blobs, config, [Descriptor(OCI_LAYER, digest, len(buf.getvalue()))])


@pytest.mark.registry
def test_a_push_compresses_on_the_way_up_in_chunks_and_the_next_push_sends_nothing(tmp_path, registry, monkeypatch):
    from builder.lifecycle.distribution import push
    from builder.registry.client import RegistryClient
    from builder.registry.reference import parse_reference
    from builder.snapshot.compressed import StreamedLayer, image_with_layers, layers_for_push

    store = Store(str(tmp_path / "store"))
    image = _uncompressed_image(store, os.urandom(300_000))  # random: the gzip is as big, several chunks
    [layer] = layers_for_push(store, image)
    assert isinstance(layer, StreamedLayer)
    count = CompressorCount(monkeypatch)
    ref = parse_reference(f"{registry.host}/lazy/app:1")

    def manifest_for(final):
        pushed = image_with_layers(store, image, final)
        return store.blobs.get_bytes(pushed.manifest.digest), pushed.manifest.media_type

    with RegistryClient(chunk_size=64 << 10) as client:
        digest, manifest = client.push_streamed(ref, store.blobs, image.config_descriptor, [layer], manifest_for)
    assert count.kinds == ["gzip"]
    [sent] = json.loads(manifest)["layers"]
    assert sent["mediaType"] == OCI_LAYER_GZIP and sent["size"] > 4 * (64 << 10)
    # what the registry holds is the blob now kept in the store as the layer's gzip variant
    kept = store.variants.get(image.config.diff_ids[0], "gzip", compression.GZIP_DEFAULT_LEVEL)
    assert kept is not None and kept.digest == sent["digest"]
    info = skopeo_inspect(f"docker://{registry.host}/lazy/app:1", "--tls-verify=false")
    assert info["Digest"] == digest and info["Layers"] == [sent["digest"]]

    # `push` of the same image: the variant exists, so it is asked for (HEAD) and not sent or made again
    store.images.tag(f"{registry.host}/lazy/app:1", image.manifest.digest)
    events = []
    result = push(store, f"{registry.host}/lazy/app:1", events=events.append)
    assert count.kinds == ["gzip"] and result.manifest_digest == digest
    assert [e.status for e in events] == ["Preparing", "Layer already exists"]
    assert {e.digest for e in events} == {image.config.diff_ids[0]}  # shown by diff_id, as docker does
