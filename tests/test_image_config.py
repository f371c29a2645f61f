"""The OCI image config and manifest models: JSON shape, canonical bytes, reading other tools' images."""

from __future__ import annotations

import json

import pytest

from builder.cache.blobs import BlobStore, sha256_digest
from builder.errors import BlobNotFound
from builder.image import media
from builder.image.config import Healthcheck, HistoryEntry, ImageConfig, RuntimeConfig
from builder.image.manifest import InvalidImage, index_bytes, manifest_bytes, read_image, write_image
from builder.image.media import Descriptor, Platform
from builder.plumbing import records

FULL = ImageConfig(
    architecture="arm64",
    variant="v8",
    created="2026-11-23T07:35:00.123456789Z",
    author="someone",
    config=RuntimeConfig(
        user="app",
        exposed_ports=("8080/tcp", "53/udp"),
        env=("PATH=/usr/bin:/bin", "B=2", "A=1"),
        entrypoint=("/bin/app",),
        cmd=("--serve",),
        volumes=("/data",),
        working_dir="/srv",
        labels=(("org.example.b", "2"), ("org.example.a", "1")),
        stop_signal="SIGTERM",
        healthcheck=Healthcheck(("CMD-SHELL", "wget -q localhost"), interval=30_000_000_000, retries=3),
        shell=("/bin/sh", "-eu", "-c"),
        on_build=("RUN make",),
        args_escaped=True,
    ),
    diff_ids=("sha256:" + "1" * 64, "sha256:" + "2" * 64),
    history=(
        HistoryEntry("2026-11-23T07:34:00Z", "ADD rootfs /", comment="base"),
        HistoryEntry("2026-11-23T07:35:00Z", "ENV A=1", empty_layer=True),
        HistoryEntry("2026-11-23T07:35:00Z", "RUN make"),
    ),
)

# As written by Docker's classic builder: capitalised keys everywhere, nulls, container_config, extras.
DOCKER_CONFIG = b"""{
  "architecture": "amd64",
  "config": {
    "Hostname": "", "Domainname": "", "User": "", "AttachStdin": false, "AttachStdout": false,
    "AttachStderr": false, "ExposedPorts": {"80/tcp": {}}, "Tty": false, "OpenStdin": false,
    "StdinOnce": false, "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "NGINX_VERSION=1.25.3"], "Cmd": null, "Healthcheck": {"Test": ["CMD", "curl", "-f", "http://localhost/"],
    "Interval": 5000000000, "Timeout": 3000000000, "Retries": 4},
    "Image": "sha256:5d0da3dc976460b72c77d94c8a1ad043720b0416bfc16c52c45d4847e53fadb6",
    "Volumes": null, "WorkingDir": "", "Entrypoint": ["/docker-entrypoint.sh"], "OnBuild": null,
    "Labels": {"maintainer": "NGINX Docker Maintainers"}, "StopSignal": "SIGQUIT"
  },
  "container": "c9d9f2b3ab8e2bbd0de1c3b6d0d3cb2f3b1a0e7e6ab1cdd7ae3d0b5c6e5f4a3b2",
  "container_config": {
    "Hostname": "c9d9f2b3ab8e", "Cmd": ["/bin/sh", "-c", "#(nop) ", "STOPSIGNAL SIGQUIT"],
    "Env": null, "Labels": null
  },
  "created": "2023-11-21T05:21:49.474045335Z",
  "docker_version": "20.10.23",
  "history": [
    {"created": "2023-11-21T05:21:24.536066751Z", "created_by": "/bin/sh -c #(nop) ADD file:39d17d28 in / "},
    {"created": "2023-11-21T05:21:24.902902852Z", "created_by": "/bin/sh -c #(nop)  CMD [\\"bash\\"]",
     "empty_layer": true},
    {"created": "2023-11-21T05:21:49.474045335Z", "created_by": "/bin/sh -c #(nop)  STOPSIGNAL SIGQUIT",
     "empty_layer": true}
  ],
  "os": "linux",
  "rootfs": {"type": "layers", "diff_ids": [
    "sha256:92770f546e065c4942829b1f0d7d1f02c2eb1e6acf4d8c8b6f8d5e5c0b5b6e33"]}
}"""


def test_full_config_round_trips_through_canonical_bytes():
    data = FULL.to_bytes()
    assert ImageConfig.from_json(data) == FULL
    assert ImageConfig.from_json(json.loads(data)) == FULL
    # Canonical: sorted keys, no whitespace, and the same bytes every time.
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()
    assert data == ImageConfig.from_json(data).to_bytes()


def test_config_json_has_dockers_shape():
    d = FULL.to_json()
    assert d["architecture"] == "arm64" and d["variant"] == "v8" and d["os"] == "linux"
    assert d["rootfs"] == {"type": "layers", "diff_ids": list(FULL.diff_ids)}
    c = d["config"]
    assert c["ExposedPorts"] == {"53/udp": {}, "8080/tcp": {}}
    assert c["Env"] == ["PATH=/usr/bin:/bin", "B=2", "A=1"]  # order kept: later ENV may refer to earlier
    assert c["Volumes"] == {"/data": {}}
    assert c["Labels"] == {"org.example.a": "1", "org.example.b": "2"}
    assert c["Healthcheck"] == {"Test": ["CMD-SHELL", "wget -q localhost"], "Interval": 30_000_000_000, "Retries": 3}
    assert c["ArgsEscaped"] is True and c["Shell"] == ["/bin/sh", "-eu", "-c"] and c["OnBuild"] == ["RUN make"]
    assert d["history"][1] == {"created": "2026-11-23T07:35:00Z", "created_by": "ENV A=1", "empty_layer": True}
    assert "empty_layer" not in d["history"][0]


def test_unset_fields_are_left_out():
    assert RuntimeConfig().to_json() == {}
    assert ImageConfig().to_json() == {"architecture": "amd64", "os": "linux", "config": {},
                                       "rootfs": {"type": "layers", "diff_ids": []}}
    assert HistoryEntry("2026-01-01T00:00:00Z").to_json() == {"created": "2026-01-01T00:00:00Z"}
    # An explicitly empty CMD differs from an unset one (ENTRYPOINT [] clears the base image's).
    assert RuntimeConfig(cmd=()).to_json() == {"Cmd": []}
    assert RuntimeConfig.from_json({"Cmd": []}).cmd == ()
    assert RuntimeConfig.from_json({"Cmd": None}).cmd is None


def test_docker_produced_config_is_read():
    config = ImageConfig.from_json(DOCKER_CONFIG)
    assert config.architecture == "amd64" and config.os == "linux"
    assert config.created == "2023-11-21T05:21:49.474045335Z"
    rc = config.config
    assert rc.cmd is None and rc.entrypoint == ("/docker-entrypoint.sh",)
    assert rc.env[1] == "NGINX_VERSION=1.25.3"
    assert rc.exposed_ports == ("80/tcp",) and rc.volumes == () and rc.on_build == ()
    assert rc.labels == (("maintainer", "NGINX Docker Maintainers"),)
    assert rc.stop_signal == "SIGQUIT"
    assert rc.healthcheck == Healthcheck(("CMD", "curl", "-f", "http://localhost/"),
                                         interval=5_000_000_000, timeout=3_000_000_000, retries=4)
    assert [h.empty_layer for h in config.history] == [False, True, True]
    assert len(config.diff_ids) == 1
    out = config.to_json()
    assert "container_config" not in out and "Hostname" not in out["config"] and "Image" not in out["config"]
    assert ImageConfig.from_json(config.to_bytes()) == config


def test_sparse_configs_from_other_tools_are_read():
    config = ImageConfig.from_json({"architecture": "amd64", "os": "linux", "config": None, "history": None})
    assert config.config == RuntimeConfig() and config.history == () and config.diff_ids == ()
    config = ImageConfig.from_json(b'{"os":"linux","architecture":"amd64","rootfs":{"type":"layers","diff_ids":null}}')
    assert config.diff_ids == ()
    with pytest.raises(ValueError):
        ImageConfig.from_json(b"[1,2]")


def test_equal_meaning_gives_equal_configs():
    a = RuntimeConfig(labels=(("b", "1"), ("a", "old"), ("a", "new")), exposed_ports=("80/tcp", "443/tcp", "80/tcp"))
    b = RuntimeConfig(labels=(("a", "new"), ("b", "1")), exposed_ports=["443/tcp", "80/tcp"])
    assert a == b and hash(a) == hash(b)
    assert ImageConfig(config=a).to_bytes() == ImageConfig(config=b).to_bytes()


def test_with_config_changes_only_the_runtime_config():
    changed = FULL.with_config(cmd=("/bin/true",), working_dir="/tmp")
    assert changed.config.cmd == ("/bin/true",) and changed.config.working_dir == "/tmp"
    assert changed.config.env == FULL.config.env and changed.diff_ids == FULL.diff_ids
    assert FULL.config.cmd == ("--serve",)  # frozen: the original is untouched


# --- manifests ---


def _store_layer(blobs: BlobStore, data: bytes) -> Descriptor:
    return Descriptor(media.OCI_LAYER_GZIP, blobs.put_bytes(data), len(data))


def test_write_image_then_read_it_back(tmp_path):
    blobs = BlobStore(str(tmp_path / "blobs"))
    layers = [_store_layer(blobs, b"layer one"), _store_layer(blobs, b"layer two")]
    config = ImageConfig(diff_ids=("sha256:" + "a" * 64, "sha256:" + "b" * 64), config=RuntimeConfig(cmd=("sh",)))
    image = write_image(blobs, config, layers, annotations={"org.opencontainers.image.title": "t"})

    manifest = json.loads(blobs.get_bytes(image.manifest.digest))
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == media.OCI_MANIFEST
    assert manifest["config"] == {"mediaType": media.OCI_CONFIG, "digest": image.image_id,
                                  "size": len(config.to_bytes())}
    assert [layer["digest"] for layer in manifest["layers"]] == [layer.digest for layer in layers]
    assert manifest["annotations"] == {"org.opencontainers.image.title": "t"}
    assert image.image_id == sha256_digest(config.to_bytes())
    assert image.manifest.platform == Platform("linux", "amd64")

    again = read_image(blobs, image.manifest.digest)
    assert again == image
    # Writing the same image twice gives the same digests: the manifest bytes are canonical.
    assert write_image(blobs, config, layers, {"org.opencontainers.image.title": "t"}) == image


def test_read_docker_schema2_manifest(tmp_path):
    blobs = BlobStore(str(tmp_path / "blobs"))
    layer = _store_layer(blobs, b"gzipped tar")
    config_data = ImageConfig.from_json(DOCKER_CONFIG).to_bytes()
    config_desc = Descriptor(media.DOCKER_CONFIG, blobs.put_bytes(config_data), len(config_data))
    layer = Descriptor(media.DOCKER_LAYER_GZIP, layer.digest, layer.size)
    digest = blobs.put_bytes(manifest_bytes(config_desc, [layer], media_type=media.DOCKER_MANIFEST))
    image = read_image(blobs, digest)
    assert image.manifest.media_type == media.DOCKER_MANIFEST
    assert image.config.config.stop_signal == "SIGQUIT" and image.layers == (layer,)

    # An old OCI manifest without mediaType is recognised by its config's type.
    doc = json.loads(manifest_bytes(config_desc, [layer], media_type=media.DOCKER_MANIFEST))
    del doc["mediaType"]
    assert read_image(blobs, blobs.put_bytes(json.dumps(doc).encode())).manifest.media_type == media.DOCKER_MANIFEST


def test_inconsistent_images_are_refused(tmp_path):
    blobs = BlobStore(str(tmp_path / "blobs"))
    layer = _store_layer(blobs, b"only layer")
    with pytest.raises(InvalidImage, match="diff_ids"):
        write_image(blobs, ImageConfig(), [layer])
    one = ImageConfig(diff_ids=("sha256:" + "c" * 64,))
    # History that disagrees with the layers is common in base images and harmless to loaders: kept.
    odd_history = records.replace(one, history=(HistoryEntry("x", empty_layer=True),))
    assert write_image(blobs, odd_history, [layer]).config.history == odd_history.history
    with pytest.raises(BlobNotFound):
        write_image(blobs, one, [Descriptor(media.OCI_LAYER_GZIP, "sha256:" + "d" * 64, 3)])
    with pytest.raises(InvalidImage, match="bytes"):
        write_image(blobs, one, [Descriptor(layer.media_type, layer.digest, layer.size + 1)])

    index = blobs.put_bytes(index_bytes([Descriptor(media.OCI_MANIFEST, layer.digest, layer.size)]))
    with pytest.raises(InvalidImage, match="index"):
        read_image(blobs, index)
    with pytest.raises(BlobNotFound):
        read_image(blobs, "sha256:" + "e" * 64)


def test_index_bytes_are_canonical():
    m = Descriptor(media.OCI_MANIFEST, "sha256:" + "f" * 64, 123, platform=Platform("linux", "arm64", "v8"))
    data = index_bytes([m])
    assert json.loads(data) == {
        "schemaVersion": 2, "mediaType": media.OCI_INDEX,
        "manifests": [{"mediaType": media.OCI_MANIFEST, "digest": m.digest, "size": 123,
                       "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}],
    }
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()
