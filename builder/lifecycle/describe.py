"""`inspect` and `history`: an image described in docker's shapes."""

from __future__ import annotations

import datetime

from builder.errors import StoreError
from builder.image.config import RuntimeConfig
from builder.plumbing.records import dataclass

from .inventory import ImageRecord, parse_time
from .layertar import LayerSizes


@dataclass(frozen=True)
class HistoryRow:
    image_id: str                     # the image ID on the newest row only, "" on the others
    created: datetime.datetime | None
    created_by: str
    size: int
    comment: str


def inspect_document(record: ImageRecord, sizes: LayerSizes) -> dict:
    """What `docker image inspect` prints for one image (Docker 20.10's fields), plus History."""
    config = record.image.config
    size = sizes.of_image(record.image)
    doc: dict = {
        "Id": record.image_id,
        "RepoTags": list(record.repo_tags),
        "RepoDigests": list(record.repo_digests),
        "Parent": "",
        # As moby (#18999): the comment of the newest history entry; "buildkit.dockerfile.v0" for a build.
        "Comment": config.history[-1].comment if config.history else "",
        "Created": config.created or "0001-01-01T00:00:00Z",
        "DockerVersion": "",
        "Author": config.author,
        "Config": docker_container_config(config.config),
        "Architecture": config.architecture,
    }
    if config.variant:
        doc["Variant"] = config.variant
    doc.update({
        "Os": config.os,
        "Size": size,
        "VirtualSize": size,
        "RootFS": {"Type": "layers", "Layers": list(config.diff_ids)},
        "History": [h.to_json() for h in config.history],
        "Manifest": {"Digest": record.manifest_digest, "MediaType": record.image.manifest.media_type},
    })
    return doc


def docker_container_config(config: RuntimeConfig) -> dict:
    """The image's runtime config as Docker's container.Config serialises it: every field present,
    unset lists and maps as null, the optional ones (ports, healthcheck, shell...) left out."""
    out = config.to_json()
    doc: dict = {
        "Hostname": "", "Domainname": "", "User": config.user,
        "AttachStdin": False, "AttachStdout": False, "AttachStderr": False,
    }
    if "ExposedPorts" in out:
        doc["ExposedPorts"] = out["ExposedPorts"]
    doc.update({"Tty": False, "OpenStdin": False, "StdinOnce": False,
                "Env": out.get("Env"), "Cmd": out.get("Cmd")})
    if "Healthcheck" in out:
        doc["Healthcheck"] = out["Healthcheck"]
    if config.args_escaped:
        doc["ArgsEscaped"] = True
    doc.update({"Image": "", "Volumes": out.get("Volumes"), "WorkingDir": config.working_dir,
                "Entrypoint": out.get("Entrypoint"), "OnBuild": out.get("OnBuild"), "Labels": out.get("Labels")})
    if config.stop_signal:
        doc["StopSignal"] = config.stop_signal
    if "Shell" in out:
        doc["Shell"] = out["Shell"]
    return doc


def history_rows(record: ImageRecord, sizes: LayerSizes) -> list[HistoryRow]:
    """The image's history, newest first, each layer-making step with its layer's size. A config
    without history (some tools write none) gets one row per layer."""
    config = record.image.config
    layers = list(zip(record.image.layers, config.diff_ids))
    rows: list[HistoryRow] = []
    if config.history:
        for entry in config.history:
            size = 0
            if not entry.empty_layer and layers:
                size = _size(sizes, *layers.pop(0))
            rows.append(HistoryRow("", parse_time(entry.created), entry.created_by, size, entry.comment))
    else:
        created = parse_time(config.created)
        rows = [HistoryRow("", created, "", _size(sizes, *layer), "") for layer in layers]
    rows.reverse()
    if rows:
        top = rows[0]
        rows[0] = HistoryRow(record.image_id, top.created, top.created_by, top.size, top.comment)
    return rows


def _size(sizes: LayerSizes, layer, diff_id: str) -> int:
    try:
        return sizes.of_layer(layer, diff_id)
    except StoreError:
        return 0
