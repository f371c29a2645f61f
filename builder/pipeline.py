"""`build()`: parse, plan, solve, assemble the image, export it. The one entry point for builds."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Mapping

from builder.errors import BuildError, ExportError
from builder import events

if TYPE_CHECKING:
    from builder.session import SecretSource, SSHSource

NETWORK_MODES = ("default", "none", "host")
ENTITLEMENTS = ("network.host", "security.insecure")
DEFAULT_PIDS_LIMIT = 4096  # BuildKit's; memory and CPU are unlimited unless asked


@dataclass(frozen=True)
class OutputSpec:
    """One `--output`: type=oci|docker|local|image|tar-less layout, with its attributes."""

    type: str
    attrs: tuple[tuple[str, str], ...] = ()

    def get(self, name: str, default: str = "") -> str:
        return dict(self.attrs).get(name, default)

    @property
    def oci_mediatypes(self) -> bool:
        """BuildKit's `oci-mediatypes`: OCI types unless type=docker (and for type=image as BuildKit
        v0.31 defaults); an empty value means true, as in BuildKit."""
        value = self.get("oci-mediatypes", "true" if self.type != "docker" else "false")
        if value.lower() not in _BOOLEANS:
            raise BuildError(f"invalid output type={self.type}: oci-mediatypes must be true or false, not {value!r}")
        return _BOOLEANS[value.lower()]

    @classmethod
    def parse(cls, text: str) -> "OutputSpec":
        """`type=oci,dest=out.tar`, or a bare path meaning `type=local,dest=PATH` (as buildx)."""
        if "=" not in text.split(",")[0]:
            return cls("local", (("dest", text),))
        attrs = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                raise BuildError(f"invalid output {text!r}: {part!r} is not key=value")
            attrs[key.strip()] = value.strip()
        kind = attrs.pop("type", "")
        if kind not in ("oci", "docker", "local", "image", "registry"):
            raise BuildError(f"invalid output {text!r}: type must be oci, docker, local, image or registry")
        if kind in ("oci", "docker", "local") and not attrs.get("dest"):
            raise BuildError(f"invalid output {text!r}: type={kind} needs dest=PATH")
        if attrs.get("oci-mediatypes", "").lower() not in _BOOLEANS:  # fail now, before anything is built
            raise BuildError(f"invalid output {text!r}: oci-mediatypes must be true or false, "
                             f"not {attrs['oci-mediatypes']!r}")
        return cls(kind, tuple(sorted(attrs.items())))


_BOOLEANS = {"": True, "true": True, "1": True, "t": True, "false": False, "0": False, "f": False}


@dataclass(frozen=True)
class BuildOptions:
    context: str
    dockerfile: str | None = None            # path; default CONTEXT/Dockerfile
    tags: tuple[str, ...] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    pull: bool = False
    outputs: tuple[OutputSpec, ...] = ()
    iidfile: str | None = None
    jobs: int | None = None
    root: str | None = None
    platform: str = "linux/amd64"
    insecure_registries: tuple[str, ...] = ()
    secrets: tuple[SecretSource, ...] = ()   # --secret: values RUN --mount=type=secret can read
    ssh: tuple[SSHSource, ...] = ()          # --ssh: agent sockets RUN --mount=type=ssh forwards
    network: str = "default"                 # --network: default|none|host for RUNs without their own
    add_hosts: tuple[str, ...] = ()          # --add-host NAME:IP, written to every RUN's /etc/hosts
    allow: tuple[str, ...] = ()              # --allow: entitlements (network.host, security.insecure)
    security_opts: tuple[str, ...] = ()      # --security-opt: seccomp=unconfined (needs security.insecure)
    memory: str | int | None = None          # --memory: every RUN's limit, bytes or "512m"/"2g"; None: none
    pids_limit: int | None = DEFAULT_PIDS_LIMIT  # --pids-limit: every RUN's; None, 0 or -1: unlimited
    cpu_shares: int | None = None            # --cpu-shares: every RUN's relative CPU weight

    def __post_init__(self):
        """The Python API takes the CLI's spellings too: outputs, secrets and ssh as strings
        (``"type=oci,dest=out.tar"``, ``"id=token,src=token.txt"``), and any sequence for a tuple."""
        from builder.session import SecretSource, SSHSource

        def parsed(values, kind):
            return tuple(kind.parse(v) if isinstance(v, str) else v for v in ((values,) if isinstance(values, str) else values))

        object.__setattr__(self, "outputs", parsed(self.outputs, OutputSpec))
        object.__setattr__(self, "secrets", parsed(self.secrets, SecretSource))
        object.__setattr__(self, "ssh", parsed(self.ssh, SSHSource))
        for name in ("tags", "insecure_registries", "add_hosts", "allow", "security_opts"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))


@dataclass(frozen=True)
class BuildResult:
    image_id: str                      # config digest, as docker shows it
    manifest_digest: str
    tags: tuple[str, ...]
    warnings: tuple[str, ...]


def _source_date_epoch(build_args: Mapping[str, str]) -> int | None:
    value = build_args.get("SOURCE_DATE_EPOCH") or os.environ.get("SOURCE_DATE_EPOCH")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise BuildError(f"SOURCE_DATE_EPOCH must be a number of seconds, not {value!r}") from None


def build(options: BuildOptions, progress: events.Progress = events.ignore, executor=None) -> BuildResult:
    from builder.context import read_dockerignore, utf8_text
    from builder.plan_cache import PlanCache, RecordingContext, inputs_key
    from builder.registry.reference import parse_reference
    from builder.solver.sources import ImageSources
    from builder.store import Store

    run_options = _run_options(options)
    _sandbox(options)
    context_dir = os.path.abspath(options.context)
    if not os.path.isdir(context_dir):
        raise BuildError(f"unable to prepare context: path {options.context!r} not found")
    dockerfile_path = options.dockerfile or os.path.join(context_dir, "Dockerfile")
    dockerfile_name = os.path.basename(dockerfile_path)
    load_id = "load-definition"
    progress(events.Started(load_id, f"[internal] load build definition from {dockerfile_name}"))
    try:
        with open(dockerfile_path, "rb") as f:
            text = utf8_text(f.read(), dockerfile_name)
    except FileNotFoundError:
        raise BuildError(f"failed to read dockerfile: open {dockerfile_path}: no such file or directory") from None
    progress(events.Finished(load_id))
    tags = tuple(str(parse_reference(t)) for t in options.tags)
    for output in options.outputs:
        if output.type in ("image", "registry") and output.get("name"):
            tags += tuple(str(parse_reference(n)) for n in output.get("name").split(",") if n)
    epoch = _source_date_epoch(options.build_args)

    with Store(options.root) as store:
        def client_factory():
            from builder.registry.client import RegistryClient

            return RegistryClient(insecure_registries=options.insecure_registries)

        sources = ImageSources(store.blobs, store.images, client_factory, pull=options.pull, progress=progress)
        try:
            context = RecordingContext(context_dir, read_dockerignore(context_dir, options.dockerfile))
            key = inputs_key(text, dockerfile_name, context, build_args=options.build_args, target=options.target,
                             platform=options.platform, source_date_epoch=epoch, run_options=run_options)
            plans = PlanCache(store.root)
            reused = None if options.no_cache else _reuse(plans, key, sources, context, store, progress)
            if reused is not None:
                image, warnings = reused
            else:
                image, warnings = _solve(options, text, dockerfile_name, store, sources, context, epoch,
                                         progress, executor, plans, key, run_options)
            export_id = "export"
            progress(events.Started(export_id, "exporting to image"))
            progress(events.Log(export_id, f"writing image {image.image_id} done"))
            for tag in tags:
                store.images.tag(tag, image.manifest.digest)
                progress(events.Log(export_id, f"naming to {tag} done"))
            for output in options.outputs:
                _export(output, image, store, tags, progress, export_id)
            progress(events.Finished(export_id))
        finally:
            sources.close()
    if options.iidfile:
        with open(options.iidfile, "w") as f:
            f.write(image.image_id)
    return BuildResult(image.image_id, image.manifest.digest, tags, warnings)


def _reuse(plans, key, sources, context, store, progress):
    """The recorded image for these inputs, if a full build would produce it again."""
    from builder.image.manifest import read_image

    record = plans.get(key)
    if record is None or not plans.still_valid(record, sources, context, store.blobs):
        return None
    for index, name in enumerate(record.steps):
        progress(events.Started(f"step-{index}", name))
        progress(events.Finished(f"step-{index}", cached=True))
    return read_image(store.blobs, record.manifest_digest), record.warnings


def decode_dockerfile(data: bytes, filename: str) -> str:
    """A Dockerfile's bytes as text; invalid UTF-8 is a ParseError naming the line and byte."""
    from builder.context import utf8_text

    return utf8_text(data, filename)


def _run_options(options: BuildOptions) -> dict:
    """What the CLI says about every RUN: network mode, extra hosts, entitlements (validated)."""
    if options.network not in NETWORK_MODES:
        raise BuildError(f'network mode "{options.network}" not supported (use default, none or host)')
    unknown = sorted(set(options.allow) - set(ENTITLEMENTS))
    if unknown:
        raise BuildError(f'invalid entitlement "{unknown[0]}" (supported: {", ".join(ENTITLEMENTS)})')
    hosts = [list(_parse_add_host(h)) for h in options.add_hosts]
    # As buildx: asking for host networking on the command line grants it.
    allowed = sorted(set(options.allow) | ({"network.host"} if options.network == "host" else set()))
    return {"network": options.network, "extra_hosts": hosts, "allow": allowed}


def _sandbox(options: BuildOptions) -> dict:
    """--security-opt and the resource limits, validated before anything runs (the executor's
    Sandbox is made from them only when a step runs: a cached build never imports the executor)."""
    seccomp = True
    for opt in options.security_opts:
        key, _, value = opt.partition("=")
        if key == "seccomp" and value == "unconfined":
            seccomp = False
        elif key == "seccomp" and value == "default":
            seccomp = True
        else:
            raise BuildError(f'invalid --security-opt "{opt}" (supported: seccomp=unconfined)')
    if not seccomp and "security.insecure" not in options.allow:
        raise BuildError("security.insecure is not allowed: --security-opt seccomp=unconfined "
                         "needs --allow security.insecure")
    memory = parse_memory(options.memory) if options.memory not in (None, "") else None
    pids = options.pids_limit if options.pids_limit is not None and options.pids_limit > 0 else None
    if options.cpu_shares is not None and not 2 <= options.cpu_shares <= 262144:
        raise BuildError(f"invalid --cpu-shares {options.cpu_shares}: must be between 2 and 262144")
    return {"seccomp": seccomp, "memory": memory, "pids": pids, "cpu_shares": options.cpu_shares}


_MEMORY_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_MIN_MEMORY = 6 << 20  # as docker: less cannot even start a shell


def parse_memory(value: str | int) -> int:
    """Docker's --memory: a number of bytes with an optional binary unit (b, k, m, g, t; kb, mib ...)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", str(value).strip().lower())
    if match is None:
        raise BuildError(f'invalid --memory "{value}" (use bytes or a unit: 512m, 2g)')
    size = int(float(match.group(1)) * _MEMORY_UNITS[match.group(2)])
    if size < _MIN_MEMORY:
        raise BuildError(f'invalid --memory "{value}": the minimum is 6 MiB')
    return size


def _parse_add_host(text: str) -> tuple[str, str]:
    """``NAME:IP`` or ``NAME=IP`` (docker's two spellings) -> (name, ip); ``host-gateway`` is kept."""
    sep = "=" if "=" in text else ":"
    name, found, address = text.partition(sep)
    address = address.strip("[]")
    if not found or not name or not address:
        raise BuildError(f'bad format for add-host: "{text}" (use NAME:IP)')
    if address != "host-gateway":
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise BuildError(f'invalid IP address in add-host: "{address}"') from None
    return name, address


def _check_entitlements(plan, run_options: dict) -> None:
    """A RUN --network=host needs --allow network.host; refused before any step runs."""
    from builder.llb import ExecOp

    if "network.host" in run_options["allow"]:
        return
    for vertex in plan.vertices:
        if isinstance(vertex.op, ExecOp) and vertex.op.network == "host":
            step = plan.names.get(vertex.digest, "RUN --network=host")
            raise BuildError(f"network.host is not allowed: {step} needs --allow network.host")


def _solve(options, text, dockerfile_name, store, sources, context, epoch, progress, executor, plans, key,
           run_options):
    """Parse, plan, solve and assemble: the full build."""
    from builder.convert import convert
    from builder.grammar import parse_dockerfile
    from builder.llb import ExecOp
    from builder.plan_cache import PlanRecord, memoizable
    from builder.session import SecretStore
    from builder.solver.solver import Solver

    dockerfile = parse_dockerfile(text, dockerfile_name)
    plan = convert(dockerfile, build_args=options.build_args, target=options.target,
                   platform=options.platform, resolver=sources, network=run_options["network"],
                   extra_hosts=tuple(tuple(h) for h in run_options["extra_hosts"]))
    _check_entitlements(plan, run_options)
    own_executor = executor is None
    if own_executor:
        from builder.executor import NamespaceExecutor, ResourceLimits, Sandbox

        settings = _sandbox(options)
        sandbox = Sandbox(seccomp=settings.pop("seccomp"), limits=ResourceLimits(**settings))
        executor = NamespaceExecutor(runtime_root=store.run_dir, network_ready=min(options.jobs or os.cpu_count() or 1, 4),
                                     sandbox=sandbox)
    try:
        if any(isinstance(v.op, ExecOp) and v.op.network == "default" for v in plan.vertices):
            warm = getattr(executor, "warm_network", None)
            if warm is not None:
                warm()  # pyroute2's import and the first namespaces overlap with the first steps
        solver = Solver(store, executor, sources, context, jobs=options.jobs, no_cache=options.no_cache,
                        progress=progress, names=dict(plan.names), source_date_epoch=epoch,
                        secrets=SecretStore(options.secrets), ssh={s.id: s.path for s in options.ssh})
        results = solver.solve(plan.vertices)
    finally:
        if own_executor:
            executor.close()
    image = _assemble(plan, results, store, epoch)
    warnings: tuple[str, ...] = ()
    if plan.unused_build_args:
        warnings = (f'[Warning] One or more build-args [{" ".join(plan.unused_build_args)}] were not consumed',)
    if memoizable(plan):
        steps = tuple(plan.names[v.digest] for v in plan.vertices if v.digest in plan.names)
        plans.put(key, PlanRecord(image.manifest.digest, sources.resolved_digests(),
                                  tuple(sorted(context.reads.items())), steps, warnings))
    return image, warnings


def _assemble(plan, results, store, epoch):
    """The target stage's image: base layers + one per layer step, config with full history."""
    from builder.image.config import HistoryEntry
    from builder.image.manifest import write_image
    from builder.image.media import Descriptor
    from builder.solver.solver import epoch_rfc3339, now_rfc3339

    stage = plan.target
    final = results[stage.vertex] if stage.vertex is not None else None
    layers = final.layers if final is not None else ()
    base = stage.config
    history = list(base.history)
    last_time = base.created or (epoch_rfc3339(epoch) if epoch is not None else None)
    for step in stage.steps:
        if step.vertex is not None:
            last_time = results[step.vertex].created or last_time
        created = epoch_rfc3339(epoch) if epoch is not None else (last_time or now_rfc3339())
        history.append(HistoryEntry(created=created, created_by=step.created_by, comment=step.comment,
                                    empty_layer=step.vertex is None))
    created = epoch_rfc3339(epoch) if epoch is not None else (last_time or now_rfc3339())
    config = replace(base, created=created, diff_ids=tuple(l.diff_id for l in layers), history=tuple(history))
    descriptors = [Descriptor(l.media_type, l.digest, l.size) for l in layers]
    return write_image(store.blobs, config, descriptors)


def _export(output, image, store, tags, progress, export_id) -> None:
    from builder.image import exporters

    dest = output.get("dest")
    if output.type == "oci":
        layout = exporters.OCIArchiveExporter if output.get("tar", "true") != "false" else exporters.OCILayoutExporter
        exporter = layout(dest, tags, output.oci_mediatypes)
    elif output.type == "docker":
        exporter = exporters.DockerArchiveExporter(dest, tags, output.oci_mediatypes)
    elif output.type == "local":
        from builder.snapshot.layers import apply_layer

        exporter = exporters.LocalExporter(dest, apply_layer)
    elif output.type in ("image", "registry"):
        if output.get("push", "false" if output.type == "image" else "true") == "true":
            _push(image, store, tags, progress, export_id, output)
        return
    else:
        raise ExportError(f"unknown output type {output.type}")
    progress(events.Log(export_id, f"exporting to {output.type} {dest}"))
    exporter.export(image, store.blobs)


def _push(image, store, tags, progress, export_id, output) -> None:
    from builder.image.manifest import for_output
    from builder.registry.client import RegistryClient
    from builder.registry.reference import parse_reference

    insecure = (output.get("registry.insecure") == "true")
    out = for_output(store.blobs, image, output.oci_mediatypes)
    for tag in tags:
        ref = parse_reference(tag)
        client = RegistryClient(insecure_registries=(ref.registry,) if insecure else ())
        try:
            client.push(ref, store.blobs, out.data, out.image.manifest.media_type)
        finally:
            client.close()
        progress(events.Log(export_id, f"pushing {tag} done"))
