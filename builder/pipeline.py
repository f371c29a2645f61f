"""`build()`: parse, plan, solve, assemble the image, export it. The one entry point for builds."""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Mapping

from builder.errors import BuildError, ExportError
from builder import events
from builder.plumbing.records import dataclass, field, replace

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

    @property
    def rewrite_timestamp(self) -> bool:
        """BuildKit's `rewrite-timestamp`: under SOURCE_DATE_EPOCH, clamp the mtimes in the layers
        the build makes. build-image's default is true (BuildKit's is false)."""
        return _BOOLEANS[self.get("rewrite-timestamp", "true").lower()]

    @classmethod
    def parse(cls, text: str) -> "OutputSpec":
        """`type=oci,dest=out.tar`, a bare path meaning `type=local,dest=PATH`, or `-` meaning
        `type=tar,dest=-` (as buildx)."""
        if text.strip() == "-":
            return cls("tar", (("dest", "-"),))
        if "=" not in text.split(",")[0]:
            return cls("local", (("dest", text),))
        attrs = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                raise BuildError(f"invalid output {text!r}: {part!r} is not key=value")
            attrs[key.strip()] = value.strip()
        kind = attrs.pop("type", "")
        if kind not in OUTPUT_ATTRIBUTES:
            raise BuildError(f"invalid output {text!r}: type must be {', '.join(OUTPUT_ATTRIBUTES)}")
        for key in attrs:
            if key not in OUTPUT_ATTRIBUTES[kind]:
                raise BuildError(f"invalid output {text!r}: unknown attribute {key}= for type={kind} "
                                 f"(known: {', '.join(OUTPUT_ATTRIBUTES[kind])})")
        if kind in ("oci", "docker", "local", "tar") and not attrs.get("dest"):
            raise BuildError(f"invalid output {text!r}: type={kind} needs dest=PATH")
        if attrs.get("dest") == "-" and (kind == "local" or attrs.get("tar", "true") == "false"):
            raise BuildError(f"invalid output {text!r}: a directory cannot be written to stdout (dest=-); "
                             "use type=tar,dest=- for the root filesystem as a tar")
        for flag in ("oci-mediatypes", "rewrite-timestamp", "force-compression"):  # fail now, before anything is built
            if attrs.get(flag, "").lower() not in _BOOLEANS:
                raise BuildError(f"invalid output {text!r}: {flag} must be true or false, not {attrs[flag]!r}")
        spec = cls(kind, tuple(sorted(attrs.items())))
        if any(key in attrs for key in _COMPRESSION_ATTRIBUTES):
            spec.compression  # checked now too
        return spec

    @property
    def compression(self):
        """BuildKit's `compression=gzip|zstd|uncompressed` (default gzip), `compression-level=N`
        and `force-compression=true` as a builder.snapshot.compressed.Compression."""
        from builder.snapshot.compressed import Compression, LayerError

        kind = self.get("compression", "gzip").lower() or "gzip"
        level_text = self.get("compression-level")
        try:
            level = int(level_text) if level_text else None
        except ValueError:
            raise BuildError(f"invalid output type={self.type}: compression-level must be a number, "
                             f"not {level_text!r}") from None
        try:
            return Compression(kind, level, _BOOLEANS[self.get("force-compression", "false").lower()])
        except LayerError as e:
            raise BuildError(f"invalid output type={self.type}: {e}") from None


# The attributes each output type takes; any other is an error rather than silently ignored.
_COMPRESSION_ATTRIBUTES = ("compression", "compression-level", "force-compression")
OUTPUT_ATTRIBUTES = {
    "oci": ("dest", "tar", "name", "oci-mediatypes", "rewrite-timestamp", *_COMPRESSION_ATTRIBUTES),
    "docker": ("dest", "name", "oci-mediatypes", "rewrite-timestamp", *_COMPRESSION_ATTRIBUTES),
    "local": ("dest", "rewrite-timestamp"),
    "tar": ("dest", "rewrite-timestamp"),
    "image": ("name", "push", "registry.insecure", "oci-mediatypes", "rewrite-timestamp", *_COMPRESSION_ATTRIBUTES),
    "registry": ("name", "push", "registry.insecure", "oci-mediatypes", "rewrite-timestamp", *_COMPRESSION_ATTRIBUTES),
}


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
    no_cache_filter: tuple[str, ...] = ()    # --no-cache-filter: stages whose steps ignore the cache
    metadata_file: str | None = None         # --metadata-file: buildx's result keys as JSON
    labels: Mapping[str, str] = field(default_factory=dict)   # --label: set on the image config
    annotations: tuple[str, ...] = ()        # --annotation [manifest:]KEY=VALUE: on the image manifest
    shm_size: str | None = None              # --shm-size: /dev/shm of every RUN (bytes, or 64m, 1g, ...)
    ulimits: tuple[str, ...] = ()            # --ulimit NAME=SOFT[:HARD]: rlimits of every RUN
    build_contexts: tuple[str, ...] = ()     # --build-context NAME=DIR|URL|docker-image://REF|oci-layout://PATH[:TAG][@DIGEST]
    security_opts: tuple[str, ...] = ()      # --security-opt: seccomp=unconfined (needs security.insecure)
    memory: str | int | None = None          # --memory: every RUN's limit, bytes or "512m"/"2g"; None: none
    pids_limit: int | None = DEFAULT_PIDS_LIMIT  # --pids-limit: every RUN's; None, 0 or -1: unlimited
    cpu_shares: int | None = None            # --cpu-shares: every RUN's relative CPU weight
    timeline: str | None = None              # --timeline FILE.html: the build as a picture (SVG)
    trace: str | None = None                 # --trace FILE.json: the same as Chrome trace events
    cgroup_parent: str | None = None         # --cgroup-parent: the cgroup every RUN's cgroup goes under
    cache_from: tuple = ()                   # --cache-from: CacheSpec or its string (type=registry|local, REF)
    cache_to: tuple = ()                     # --cache-to: CacheSpec or its string (type=registry|local|inline)

    def __post_init__(self):
        """The Python API takes the CLI's spellings too: outputs, secrets and ssh as strings
        (``"type=oci,dest=out.tar"``, ``"id=token,src=token.txt"``), and any sequence for a tuple."""
        def parsed(values, kind):
            return tuple(kind.parse(v) if isinstance(v, str) else v for v in ((values,) if isinstance(values, str) else values))

        object.__setattr__(self, "outputs", parsed(self.outputs, OutputSpec))
        if self.secrets or self.ssh:  # (the session module is imported only for builds that use it)
            from builder.session import SecretSource, SSHSource

            object.__setattr__(self, "secrets", parsed(self.secrets, SecretSource))
            object.__setattr__(self, "ssh", parsed(self.ssh, SSHSource))
        else:
            object.__setattr__(self, "secrets", ())
            object.__setattr__(self, "ssh", ())
        object.__setattr__(self, "cache_from", _cache_specs(self.cache_from, "import"))
        object.__setattr__(self, "cache_to", _cache_specs(self.cache_to, "export"))
        for name in ("tags", "insecure_registries", "add_hosts", "allow", "no_cache_filter", "annotations",
                     "ulimits", "build_contexts", "security_opts"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))


@dataclass(frozen=True)
class BuildResult:
    image_id: str                      # config digest, as docker shows it
    manifest_digest: str
    tags: tuple[str, ...]
    warnings: tuple[str, ...]
    wrote_stdout: bool = False         # an output (dest=-) was the standard output
    cache: Mapping = field(default_factory=dict)   # --cache-from/--cache-to results, as in --metadata-file


def _cache_specs(values, kind: str) -> tuple:
    """--cache-from / --cache-to values as CacheSpecs (strings are parsed, a bad one is a BuildError)."""
    if not values:
        return ()
    from builder.remotecache.spec import CacheSpec

    parse = CacheSpec.parse_import if kind == "import" else CacheSpec.parse_export
    values = (values,) if isinstance(values, (str, CacheSpec)) else values
    return tuple(parse(v) if isinstance(v, str) else v for v in values)


def _source_date_epoch(build_args: Mapping[str, str]) -> int | None:
    value = build_args.get("SOURCE_DATE_EPOCH") or os.environ.get("SOURCE_DATE_EPOCH")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise BuildError(f"SOURCE_DATE_EPOCH must be a number of seconds, not {value!r}") from None


def build(options: BuildOptions, progress: events.Progress = events.ignore, executor=None, stdin=None) -> BuildResult:
    """Build as OPTIONS say. A context or Dockerfile of `-` is read from STDIN (default: sys.stdin); a
    context may be a URL (a tar or Dockerfile over HTTP(S), a git repository)."""
    from builder.remote_context import is_remote, remote_context
    from builder.stdin_context import STDIN, stdin_forms

    keep_git = options.build_args.get("BUILDKIT_CONTEXT_KEEP_GIT_DIR", "") in ("1", "true")
    remote_named = [c for c in options.build_contexts if is_remote(c.partition("=")[2])]
    if remote_named:  # --build-context NAME=URL: fetched like a URL context, then a directory
        import contextlib

        with contextlib.ExitStack() as fetched:
            named = []
            for text in options.build_contexts:
                name, _, value = text.partition("=")
                if text in remote_named:
                    directory, dockerfile_only = fetched.enter_context(remote_context(value, keep_git))
                    if dockerfile_only is not None:
                        raise BuildError(f"--build-context {name}: {value} is a Dockerfile, not a context")
                    text = f"{name}={directory}"
                named.append(text)
            return build(replace(options, build_contexts=tuple(named)), progress, executor, stdin)
    if is_remote(options.context):
        with remote_context(options.context, keep_git) as (context, fetched_dockerfile):
            dockerfile = options.dockerfile
            if fetched_dockerfile is not None and dockerfile != STDIN:
                dockerfile = fetched_dockerfile   # the URL was a Dockerfile
            elif dockerfile and dockerfile != STDIN and not os.path.isabs(dockerfile):
                dockerfile = os.path.join(context, dockerfile)   # -f is inside the fetched context
            return build(replace(options, context=context, dockerfile=dockerfile), progress, executor, stdin)
    if STDIN not in (options.context, options.dockerfile):
        return _build(options, progress, executor)
    if stdin is None:
        import sys

        stdin = sys.stdin.buffer
    with stdin_forms(options.context, options.dockerfile, stdin) as (context, dockerfile):
        return _build(replace(options, context=context, dockerfile=dockerfile), progress, executor)


def build_if_cached(options: BuildOptions, progress: events.Progress = events.ignore, *,
                    namespace: str | None = None, isolate_cache: bool = False) -> BuildResult | None:
    """OPTIONS' build when its unchanged-rebuild record answers it whole, nothing parsed, run or
    fetched (a warm server answers those on a thread of its own, in the user's NAMESPACE of the
    store); None when it needs more, and what PROGRESS was told is then the caller's to drop."""
    from builder.remote_context import is_remote
    from builder.stdin_context import STDIN

    if (options.pull or options.no_cache or STDIN in (options.context, options.dockerfile)
            or is_remote(options.context) or options.build_contexts
            or any(o.type in ("image", "registry") and o.get("push", "false" if o.type == "image" else "true") == "true"
                   for o in options.outputs)):
        return None
    return _build(options, progress, None, cached_only=(namespace, isolate_cache))


def _build(options: BuildOptions, progress: events.Progress, executor, cached_only=None) -> BuildResult | None:
    """The build, with its progress watched for the cache-miss reasons of --metadata-file and,
    if asked, drawn as --timeline/--trace once it has ended (failed or not)."""
    misses = _MissLog(progress)
    if cached_only is not None or not (options.timeline or options.trace):
        return _build_watched(options, misses, executor, misses, cached_only)
    from builder.timeline import TimelineRecorder

    recorder = TimelineRecorder(misses)
    failed = True
    try:
        result = _build_watched(options, recorder, executor, misses)
        failed = False
        return result
    finally:
        try:
            recorder.write(html=options.timeline, trace=options.trace)
        except OSError as e:
            if not failed:  # a failed build's own error is the one to show
                raise BuildError(f"failed to write the timeline: {e.filename}: {e.strerror or e}") from None


class _MissLog:
    """Passes events on and keeps, in order, every step's cache-miss reason (--metadata-file)."""

    def __init__(self, progress: events.Progress):
        self.progress = progress
        self.names: dict[str, str] = {}
        self.misses: list[tuple[str, str, events.CacheMiss]] = []

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, events.Started):
            self.names[event.id] = event.name
        elif isinstance(event, events.Finished) and event.cache_miss is not None:
            self.misses.append((event.id, self.names.get(event.id, ""), event.cache_miss))
        self.progress(event)


def _build_watched(options: BuildOptions, progress: events.Progress, executor, misses: _MissLog,
                   cached_only=None) -> BuildResult | None:
    """CACHED_ONLY (namespace, isolate_cache): only an unchanged rebuild's record may answer; None if it cannot."""
    from builder.context import ChecksumCache, utf8_text
    from builder.image.platform_spec import normalize_platform

    options = replace(options, platform=normalize_platform(options.platform))
    run_options = _run_options(options)
    # A missing src= fails now, even if every step is cached (no --secret: the solve makes an empty store).
    secrets = _secret_store(options.secrets) if options.secrets else None
    named_contexts = _parse_build_contexts(options.build_contexts)
    _sandbox(options)
    context_dir = os.path.abspath(options.context)
    if not os.path.isdir(context_dir):
        if os.path.exists(context_dir):
            raise BuildError(f"unable to prepare context: context must be a directory: {options.context}")
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
    except OSError as e:  # a directory, no permission (invalid UTF-8 is utf8_text's ParseError)
        raise BuildError(f"failed to read dockerfile: read {dockerfile_path}: {(e.strerror or str(e)).lower()}") from None
    progress(events.Log(load_id, f"transferring dockerfile: {_byte_size(len(text.encode()))} done"))
    progress(events.Finished(load_id))
    early = _EarlyNetwork(executor is None and cached_only is None and run_options["network"] == "default"
                          and _may_run_networked(text), ready=_network_ready(options))
    if options.no_cache:
        early.start()  # every RUN will run: the agent starts before the store and the sources are even imported
    try:
        from builder.plan_cache import PlanCache, RecordingContext, inputs_key
        from builder.registry.reference import parse_reference
        from builder.solver.sources import ImageSources
        from builder.store import Store

        tags = tuple(str(parse_reference(t)) for t in options.tags)
        for output in options.outputs:
            if output.type in ("image", "registry") and output.get("name"):
                tags += tuple(str(parse_reference(n)) for n in output.get("name").split(",") if n)
        epoch = _source_date_epoch(options.build_args)
    except BaseException:
        early.close()
        raise

    namespace, isolate_cache = cached_only or (None, None)
    with early, Store(options.root, namespace=namespace, isolate_cache=isolate_cache) as store:
        def client_factory():
            from builder.registry.client import RegistryClient

            if cached_only is not None:  # a base that is not local: more than the record can answer
                raise BuildError("a registry is needed")

            return RegistryClient(insecure_registries=options.insecure_registries)

        sources = ImageSources(store.blobs, store.images, client_factory, pull=options.pull, progress=progress)
        try:
            context = RecordingContext(context_dir, _load_dockerignore(context_dir, options.dockerfile, progress),
                                       checksum_cache=ChecksumCache.in_store(store.root, context_dir))
            rewrites = _timestamp_modes(options.outputs, epoch)
            key = inputs_key(text, dockerfile_name, context, build_args=options.build_args, target=options.target,
                             platform=options.platform, source_date_epoch=epoch,
                             run_options={**run_options, "rewrite_timestamp": rewrites[0]})
            plans = PlanCache(store.cache_root)
            # Named contexts' reads are not recorded by the plan cache: such builds always plan; nor
            # do outputs that disagree on rewrite-timestamp (they need the unclamped image).
            mixed = len(set(rewrites)) > 1
            # A cache export needs the solve's steps: no unchanged-rebuild shortcut then.
            reused = (None if options.no_cache or options.no_cache_filter or named_contexts or mixed
                      or options.cache_to else _reuse(plans, key, sources, context, store, progress))
            cache_report: dict = {}
            if reused is not None:
                image, warnings = reused
                variants = {rewrites[0]: image}
            elif cached_only is not None:
                return None
            else:
                early.start()  # nothing to reuse: RUNs will run (unless their records hit)
                imported = _import_cache(options, client_factory, store, progress)
                try:
                    variants, warnings, steps = _solve(options, text, dockerfile_name, store, sources, context,
                                                       epoch, progress, executor, plans, key, run_options, secrets,
                                                       named_contexts, rewrites, imported, early.network)
                    variants = {mode: _decorate(variant, options, store) for mode, variant in variants.items()}
                    cache_report, cache_warnings = _export_cache(options, steps, store, imported, progress)
                finally:
                    if imported is not None:
                        imported.close()
                warnings += cache_warnings
            if reused is not None:
                variants = {mode: _decorate(variant, options, store) for mode, variant in variants.items()}
            image = variants[rewrites[0]]
            export_id = "export"
            progress(events.Started(export_id, "exporting to image"))
            # Each output's image: the layers compressed as it asks (oci, docker, push), made now.
            exported = [_output_image(output, variants[rewrite], store, progress, export_id)
                        for output, rewrite in zip(options.outputs, rewrites)]
            # The steps' records and layers are durable before a name points at them. A reused
            # image was made durable by the build that recorded it: unless --label, --annotation
            # or an output's compression wrote new blobs, there is nothing to sync.
            if reused is None or any(e is not reused[0] for e in [image, *exported]):
                store.sync()
            # Before any name moves: a failure here leaves the store as it was.
            _write_result_files(options, exported[0] if exported else image, tags, warnings, misses.misses,
                                cache_report)
            progress(events.Log(export_id, f"writing image {image.image_id} done"))
            for tag in tags:
                store.images.tag(tag, image.manifest.digest)
                progress(events.Log(export_id, f"naming to {tag} done"))
            store.images.own(image.manifest.digest)  # in a user's namespace: theirs, even unnamed
            mounts = cache_report.get("mount_from", {})
            for output, output_image in zip(options.outputs, exported):
                _export(output, output_image, store, tags, progress, export_id, mounts)
            progress(events.Finished(export_id))
        finally:
            sources.close()
    cache_report = {k: v for k, v in cache_report.items() if k != "mount_from"}
    return BuildResult(image.image_id, image.manifest.digest, tags, warnings,
                       wrote_stdout=any(o.get("dest") == "-" for o in options.outputs), cache=cache_report)


def _secret_store(sources):
    from builder.session import SecretStore

    return SecretStore(sources)


def __getattr__(name: str):
    """CacheSpec, re-exported for the CLI, is imported on first use: a build without --cache-from
    or --cache-to never needs builder.remotecache."""
    if name == "CacheSpec":
        from builder.remotecache.spec import CacheSpec

        return CacheSpec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _import_cache(options: BuildOptions, client_factory, store, progress):
    """--cache-from: every source's metadata now; blobs later, for the steps that hit."""
    if not options.cache_from:
        return None
    from builder.image.media import Platform
    from builder.remotecache.importer import load

    import_id = "cache-import"
    progress(events.Started(import_id, "[internal] importing cache manifest from "
                            + ", ".join(s.where for s in options.cache_from)))
    os_name, _, rest = options.platform.partition("/")
    arch, _, variant = rest.partition("/")
    imported = load(options.cache_from, client_factory, store.blobs, Platform(os_name, arch, variant))
    progress(events.Finished(import_id))
    return imported


def _export_cache(options: BuildOptions, steps, store, imported, progress) -> tuple[dict, tuple[str, ...]]:
    """--cache-to type=registry|local (inline went into the image config already): the report for
    --metadata-file, and the warnings (an export that failed under ignore-error=true)."""
    from builder.remotecache import exporter

    report: dict = {}
    warnings: list[str] = []
    mounts = imported.mount_sources() if imported is not None else {}
    if imported is not None:
        report["imported"] = [s.to_json() for s in imported.stats]
        warnings.extend(imported.warnings)
    exported = []
    for spec in options.cache_to:
        chosen = steps[spec.mode]
        if spec.type == "inline":
            config, _ = exporter.cache_config(chosen, store)
            exported.append(exporter.ExportResult("inline", "the image config", "min", len(config.records),
                                                  len(config.layers)).to_json())
            continue
        export_id = f"cache-export-{len(exported)}"
        progress(events.Started(export_id, f"exporting cache to {spec.type} {spec.where}"))
        try:
            facts = steps.get((spec.mode, "facts"), b"")
            if spec.type == "registry":
                result = exporter.export_registry(spec, chosen, store, _cache_client_factory(options),
                                                  mount_from=_mounts_for(mounts, spec.get("ref")), facts=facts)
            else:
                result = exporter.export_local(spec, chosen, store, facts=facts)
        except BuildError as error:
            progress(events.Finished(export_id, error=str(error)))
            if not spec.flag("ignore-error", False):
                raise ExportError(f"failed to export cache to {spec.where}: {error}") from None
            text = " ".join(str(error).split())
            warnings.append(f"[Warning] cache export to {spec.where} failed (ignore-error=true): {text}")
            exported.append(exporter.ExportResult(spec.type, spec.where, spec.mode, 0, 0, error=text).to_json())
            continue
        progress(events.Log(export_id, f"{result.records} records, {result.layers} layers: "
                                       f"{result.blobs_written} blobs written, {result.blobs_reused} reused"))
        progress(events.Finished(export_id))
        exported.append(result.to_json())
    if exported:
        report["exported"] = exported
    if mounts:
        report["mount_from"] = mounts
    return report, tuple(warnings)


def _cache_client_factory(options: BuildOptions):
    def make(blob_status):
        from builder.registry.client import RegistryClient

        return RegistryClient(insecure_registries=options.insecure_registries, blob_status=blob_status)
    return make


def _mounts_for(mounts: dict, reference: str) -> dict[str, str]:
    """Digest -> repository, for the blobs an imported registry cache on REFERENCE's registry has."""
    from builder.registry.reference import parse_reference

    registry = parse_reference(reference).registry
    return {digest: repository for digest, (where, repository) in mounts.items() if where == registry}


def _load_dockerignore(context_dir: str, dockerfile: str | None, progress):
    """The context's ignore rules, read as BuildKit's "[internal] load .dockerignore" step."""
    from builder.context import load_dockerignore

    step = "load-dockerignore"
    progress(events.Started(step, "[internal] load .dockerignore"))
    try:
        rules, size = load_dockerignore(context_dir, dockerfile)
    except BuildError as error:
        progress(events.Finished(step, error=str(error)))
        raise
    # BuildKit transfers the file as a directory listing: an absent one still counts 2 bytes.
    progress(events.Log(step, f"transferring context: {_byte_size(size or 2)} done"))
    progress(events.Finished(step))
    return rules


def _byte_size(count: int) -> str:
    """Sizes as BuildKit's progress writes them (go-units HumanSize: 45B, 1.04kB, 2.3MB)."""
    size, unit = float(count), "B"
    for next_unit in ("kB", "MB", "GB", "TB"):
        if size < 1000:
            break
        size, unit = size / 1000, next_unit
    return f"{size:.4g}{unit}"


def _decorate(image, options: BuildOptions, store):
    """The image with --label (over the Dockerfile's LABELs, as buildx) and --annotation applied."""
    from builder.image.manifest import write_image

    annotations = _manifest_annotations(options.annotations)
    if not options.labels and not annotations:
        return image
    runtime = image.config.config
    labels = {**dict(runtime.labels), **options.labels}
    config = replace(image.config, config=replace(runtime, labels=tuple(sorted(labels.items()))))
    return write_image(store.blobs, config, image.layers, annotations)


def _manifest_annotations(values) -> dict[str, str]:
    """`--annotation [manifest:]KEY=VALUE`; a single-platform build writes no index, so the index
    and descriptor kinds have nothing to go on and are refused rather than dropped."""
    annotations = {}
    for text in values:
        key, sep, value = text.partition("=")
        kind, colon, name = key.partition(":")
        if not colon or "[" in kind or kind not in ("manifest", "index", "manifest-descriptor", "index-descriptor"):
            kind, name = "manifest", key
        if not sep or not name:
            raise BuildError(f'invalid annotation "{text}": use [manifest:]KEY=VALUE')
        if kind != "manifest":
            raise BuildError(f'annotation "{text}": {kind} annotations need a multi-platform image index, '
                             "which build-image does not make yet; use manifest annotations")
        annotations[name] = value
    return annotations


def _write_result_files(options: BuildOptions, image, tags, warnings, misses=(), cache_report: dict | None = None) -> None:
    """--iidfile and --metadata-file, each written whole or not at all."""
    import base64
    import json

    from builder.plumbing.files import write_atomically

    def write(path: str, data: bytes, what: str) -> None:
        try:
            write_atomically(path, data)
        except OSError as e:
            raise BuildError(f"failed to write {what} {path}: {e.strerror or e}") from None

    if options.iidfile:
        write(options.iidfile, image.image_id.encode(), "image ID file")
    if options.metadata_file:
        manifest = image.manifest
        metadata = {
            "containerimage.digest": manifest.digest,
            "containerimage.config.digest": image.image_id,
            "containerimage.descriptor": {"mediaType": manifest.media_type, "digest": manifest.digest,
                                          "size": manifest.size},
            # buildx's warnings are BuildKit VertexWarnings: the message in `short`, base64 as Go writes []byte.
            "buildx.build.warnings": [{"level": 1, "short": base64.b64encode(w.encode()).decode()}
                                      for w in warnings],
            # build-image's own: why each step that ran was not CACHED (README: "Why did this step miss").
            "buildimage.cache.misses": [{"vertex": vertex, "step": name, "reason": miss.reason}
                                        for vertex, name, miss in misses],
        }
        if tags:
            metadata["image.name"] = ",".join(tags)
        cache = {k: v for k, v in (cache_report or {}).items() if k != "mount_from"}
        if cache:
            metadata["buildimage.cache"] = cache
        write(options.metadata_file, json.dumps(metadata, indent=2, sort_keys=True).encode() + b"\n",
              "metadata file")


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
    run = {"network": options.network, "extra_hosts": hosts, "allow": allowed}
    # Only when given, so plan-cache keys of builds without them stay as they were.
    if options.shm_size is not None:
        run["shm_size"] = parse_ram_size(options.shm_size, "shm-size")
    if options.ulimits:
        run["ulimits"] = [list(parse_ulimit(u)) for u in options.ulimits]
    return run


ULIMIT_NAMES = ("core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc",
                "rss", "rtprio", "rttime", "sigpending", "stack")


def parse_ulimit(text: str) -> tuple[str, int, int]:
    """docker's `--ulimit NAME=SOFT[:HARD]` (HARD defaults to SOFT; -1 is unlimited)."""
    name, sep, limits = text.partition("=")
    if not sep:
        raise BuildError(f'invalid ulimit argument: "{text}" (use NAME=SOFT[:HARD], e.g. nofile=1024:2048)')
    if name not in ULIMIT_NAMES:
        raise BuildError(f"invalid ulimit type: {name}")
    soft_text, _, hard_text = limits.partition(":")
    try:
        soft = int(soft_text)
        hard = int(hard_text) if hard_text else soft
    except ValueError:
        raise BuildError(f'invalid ulimit argument: "{text}" (limits must be numbers)') from None
    if soft != -1 and hard != -1 and soft > hard or soft == -1 and hard != -1:
        raise BuildError(f"ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}")
    return name, soft, hard


def parse_ram_size(text: str, flag: str) -> int:
    """go-units' RAMInBytes: `64m`, `1g`, `512k`, `1048576` (binary multiples)."""
    import re

    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgtp]?)b?", text.strip().lower())
    if not match:
        raise BuildError(f'invalid {flag} "{text}": use a size such as 64m or 1g')
    size = int(float(match.group(1)) * 1024 ** " kmgtp".index(match.group(2) or " "))
    if size <= 0:
        raise BuildError(f'invalid {flag} "{text}": must be more than 0')
    return size


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
    if options.cgroup_parent is not None and (".." in options.cgroup_parent.split("/") or "\0" in options.cgroup_parent):
        raise BuildError(f"invalid --cgroup-parent {options.cgroup_parent!r}: a cgroup path without '..'")
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
        import ipaddress  # (only for --add-host: its import costs more than a cached rebuild's work)

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


_RUN_LINE = re.compile(r"^\s*(?:onbuild\s+)?run\b(.*)$", re.IGNORECASE | re.MULTILINE)


def _may_run_networked(text: str) -> bool:
    """A cheap hint, before parsing, that some RUN will want the default network."""
    return any(not re.search(r"--network[= ](none|host)\b", flags) for flags in _RUN_LINE.findall(text))


def _timestamp_modes(outputs, epoch: int | None) -> list[bool]:
    """Per output (the first one's, or the default's, also names the image in the store): clamp new
    layers' mtimes to SOURCE_DATE_EPOCH? Without an epoch there is nothing to clamp to."""
    if epoch is None:
        return [False] * max(1, len(outputs))
    return [o.rewrite_timestamp for o in outputs] or [True]


class _RecordingResolver:
    """The converter's resolver, remembering which base images it asked for (the plan memo's
    entry holds their digests: a moved tag plans again)."""

    def __init__(self, sources):
        self.sources = sources
        self.asked: list[tuple[str, str]] = []

    def resolve_config(self, name: str, platform: str):
        answer = self.sources.resolve_config(name, platform)
        self.asked.append((name, platform))
        return answer

    def bases(self) -> list[tuple[str, str, str]]:
        return [(name, platform, self.sources.resolve(name, platform).manifest_digest)
                for name, platform in dict.fromkeys(self.asked)]


def _base_digest(sources):
    """(name, platform) -> the base image's manifest digest now, or None if it cannot be resolved
    (the converter then reports why)."""
    def digest(name: str, platform: str) -> str | None:
        try:
            return sources.resolve(name, platform).manifest_digest
        except BuildError:
            return None

    return digest


class _EarlyNetwork:
    """The default network's agent, started as soon as the build knows that RUNs will run (with
    --no-cache, before the store is even opened), so that its start-up (pyroute2's import, the NAT
    table, the first namespaces) runs on the other core while this process imports and plans."""

    def __init__(self, wanted: bool, ready: int):
        self.wanted, self.ready = wanted, ready
        self.network = None

    def start(self) -> None:
        if self.wanted and self.network is None:
            from builder.executor.network import BridgeNetwork

            self.network = BridgeNetwork(ready=self.ready)
            self.network.warm()

    def close(self) -> None:
        network, self.network = self.network, None
        if network is not None:
            network.close()

    def __enter__(self) -> "_EarlyNetwork":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _network_ready(options: BuildOptions) -> int:
    """Namespaces the agent keeps ready: one per step that may run at once, at most 4."""
    return min(options.jobs or os.cpu_count() or 1, 4)


def _solve(options, text, dockerfile_name, store, sources, context, epoch, progress, executor, plans, key,
           run_options, secrets, named_contexts, rewrites, imported=None, network=None):
    """Plan (or take the plan from the memo), solve and assemble: the full build."""
    from builder.llb import ExecOp
    from builder.plan import PlanMemo
    from builder.plan_cache import PlanRecord, memoizable
    from builder.solver.solver import Solver

    own_executor = executor is None
    if own_executor:
        from builder.executor import NamespaceExecutor, ResourceLimits, Sandbox

        settings = _sandbox(options)
        sandbox = Sandbox(seccomp=settings.pop("seccomp"), limits=ResourceLimits(**settings))
        executor = NamespaceExecutor(runtime_root=store.run_dir, network=network, network_ready=_network_ready(options),
                                     sandbox=sandbox, cgroup_parent=options.cgroup_parent)
    warm = getattr(executor, "warm_network", None)
    warm_sandbox = getattr(executor, "warm_sandbox", None)
    try:
        if warm is not None and run_options["network"] == "default" and _may_run_networked(text):
            warm()  # the network agent starts beside parsing and planning, on the other core
        if warm_sandbox is not None and _RUN_LINE.search(text):
            warm_sandbox()  # the seccomp filter compiles beside parsing (its ldconfig runs cost no GIL)
        memo = None if named_contexts else PlanMemo(store.cache_root)
        plan = memo.get(key, _base_digest(sources)) if memo is not None else None
        if plan is None:
            from builder.convert import convert
            from builder.grammar import parse_dockerfile

            asking = _RecordingResolver(sources)
            dockerfile = parse_dockerfile(text, dockerfile_name)
            plan = convert(dockerfile, build_args=options.build_args, target=options.target,
                           platform=options.platform, resolver=asking, network=run_options["network"],
                           extra_hosts=tuple(tuple(h) for h in run_options["extra_hosts"]),
                           shm_size=run_options.get("shm_size", 0),
                           ulimits=tuple(tuple(u) for u in run_options.get("ulimits", ())),
                           build_contexts=_context_kinds(named_contexts), order_memo=plans.order_memo())
            if memo is not None:
                memo.put(key, plan, asking.bases())
        _check_entitlements(plan, run_options)
        no_cache_for = _no_cache_vertices(plan, options.no_cache_filter)
        explainer = _explainer(options, plan, store, context, no_cache_for, imported)
        if warm is not None and any(isinstance(v.op, ExecOp) and v.op.network == "default" for v in plan.vertices):
            warm()  # (started already, unless the hint above missed this RUN)
        solver = Solver(store, executor, sources, context, jobs=options.jobs, no_cache=options.no_cache,
                        no_cache_for=no_cache_for, named_contexts=_local_contexts(named_contexts, store.root),
                        progress=progress, names=dict(plan.names), source_date_epoch=epoch,
                        secrets=secrets if secrets is not None else _secret_store(()),
                        ssh={s.id: s.path for s in options.ssh},
                        rewrite_timestamp=all(rewrites), explainer=explainer, imported=imported,
                        every_result=any(spec.mode == "max" for spec in options.cache_to))
        try:
            results = solver.solve(plan.vertices)
        except BuildError as error:
            _attach_source(error, plan, text, dockerfile_name)
            raise
        try:
            solver.save_history(plan.vertices)
        except (OSError, BuildError):
            pass  # the history only explains the next build's misses; the image is built
    finally:
        if own_executor:
            executor.close()
    steps = _cache_steps(solver, plan, options.cache_to, explainer)
    inline = next((spec for spec in options.cache_to if spec.type == "inline"), None)
    image = _assemble(plan, results, store, epoch, inline_cache=_inline_cache(steps, store) if inline else "")
    variants = {all(rewrites): image}
    if not all(rewrites) and any(rewrites):
        variants[True] = _clamped_copy(image, results, store, epoch)
    warnings: tuple[str, ...] = ()
    if plan.unused_build_args:
        warnings = (f'[Warning] One or more build-args [{" ".join(plan.unused_build_args)}] were not consumed',)
    if memoizable(plan) and not named_contexts and len(variants) == 1 and not options.cache_to:
        steps = tuple(plan.names[v.digest] for v in plan.vertices if v.digest in plan.names)
        plans.put(key, PlanRecord(image.manifest.digest, sources.resolved_digests(),
                                  tuple(sorted(context.reads.items())), steps, warnings))
    return variants, warnings, steps


def _cache_steps(solver, plan, cache_to, explainer) -> dict:
    """mode -> the StepCaches a --cache-to of that mode writes (min: the target's own chain), and
    (mode, "facts") -> what those steps' keys were made of, for the reasons of another machine's misses."""
    from builder.remotecache.exporter import StepCache

    final = plan.target.vertex
    steps: dict = {}
    for mode in {spec.mode for spec in cache_to}:
        chosen = [] if final is None else solver.cached_steps(None if mode == "max" else final)
        steps[mode] = [StepCache(*step) for step in chosen]
        chain = _chain_of(final)
        try:
            steps[mode, "facts"] = explainer.exported(solver, plan.vertices if mode == "max" else chain,
                                                      solver.layer_timestamps, shown=chain)
        except (OSError, BuildError):
            pass   # the facts only explain another machine's misses: the cache goes without them
    return steps


def _chain_of(vertex) -> list:
    """VERTEX and what it stands on through input 0, as a mode=min export keeps them."""
    chain = []
    while vertex is not None:
        chain.append(vertex)
        vertex = vertex.inputs[0] if vertex.inputs else None
    return chain[::-1]


def _inline_cache(steps: dict, store) -> str:
    from builder.remotecache.exporter import inline_value

    return inline_value(steps["min"], store, steps.get(("min", "facts"), b""))


def _explainer(options, plan, store, context, no_cache_for, imported=None):
    """What says why a step runs: this build against the last one of the same Dockerfile and
    target, or, for a step that one lacks, against the build that wrote an imported cache."""
    from builder.solver.explain import MissExplainer, decode_exported

    dockerfile = os.path.abspath(options.dockerfile or os.path.join(context.root, "Dockerfile"))
    inside = os.path.relpath(dockerfile, os.path.abspath(context.root))
    exported_name = os.path.basename(dockerfile) if inside.startswith(os.pardir) else inside
    wanted = [s.lower() for s in options.no_cache_filter]
    filtered = {digest: next((w for w in wanted if w in plan.stage_of.get(digest, ())), wanted[0] if wanted else "")
                for digest in no_cache_for}
    histories = None if imported is None else (lambda: imported.step_histories(decode_exported, store.blobs))
    return MissExplainer.on_disk(store.root, dockerfile, options.target, names=plan.names, lines=plan.lines, arg_names=plan.arg_names,
                                 no_cache=options.no_cache, no_cache_filter=filtered, exported_name=exported_name,
                                 imported=histories)


def _clamped_copy(image, results, store, epoch):
    """IMAGE with the layers this build made rewritten to clamped mtimes, for the outputs that
    want rewrite-timestamp when others do not; base image layers are kept as they are."""
    from builder.image.manifest import write_image
    from builder.image.media import Descriptor
    from builder.snapshot.layers import rewrite_layer_timestamps

    base = {layer.diff_id for vertex, result in results.items() if vertex.op.kind == "source.image"
            for layer in result.layers}
    descriptors, diff_ids = [], []
    for desc, diff_id in zip(image.layers, image.config.diff_ids):
        if diff_id not in base:
            with store.blobs.open(desc.digest) as stream:
                layer = rewrite_layer_timestamps(stream, store.blobs, epoch, media_type=desc.media_type)
            desc, diff_id = Descriptor(layer.media_type, layer.digest, layer.size), layer.diff_id
        descriptors.append(desc)
        diff_ids.append(diff_id)
    return write_image(store.blobs, replace(image.config, diff_ids=tuple(diff_ids)), descriptors)


def _parse_build_contexts(values) -> dict[str, str]:
    """`--build-context NAME=VALUE`: NAME -> an absolute directory, `docker-image://REF` or `oci-layout://ABSPATH[:TAG][@DIGEST]`."""
    contexts: dict[str, str] = {}
    for text in values:
        name, sep, value = text.partition("=")
        if not sep or not name or not value:
            raise BuildError(f'invalid --build-context "{text}": use NAME=DIR or NAME=docker-image://REF')
        if value.startswith("docker-image://"):
            if not value.removeprefix("docker-image://"):
                raise BuildError(f'invalid --build-context "{text}": docker-image:// needs an image name')
            contexts[name] = value
        elif value.startswith("oci-layout://"):
            from builder.image.layout import parse_layout_ref

            contexts[name] = str(parse_layout_ref(value))   # the path made absolute
        elif "://" in value:
            scheme = value.split("://")[0]
            raise BuildError(f'--build-context {name}: {scheme} contexts are not supported yet '
                             "(a directory, a git or http(s) URL, docker-image://REF or oci-layout://PATH is)")
        elif not os.path.isdir(value):
            raise BuildError(f"--build-context {name}: {value} is not a directory")
        else:
            contexts[name] = os.path.abspath(value)
    return contexts


_IMAGE_CONTEXTS = ("docker-image://", "oci-layout://")


def _context_kinds(named_contexts: dict[str, str]) -> dict[str, str]:
    return {n: v if v.startswith(_IMAGE_CONTEXTS) else "local" for n, v in named_contexts.items()}


def _local_contexts(named_contexts: dict[str, str], store_root: str) -> dict:
    from builder.context import BuildContext, ChecksumCache, read_dockerignore

    return {n: BuildContext(v, read_dockerignore(v), checksum_cache=ChecksumCache.in_store(store_root, v))
            for n, v in named_contexts.items() if not v.startswith(_IMAGE_CONTEXTS)}


def _attach_source(error: BuildError, plan, text: str, dockerfile_name: str) -> None:
    """The failed step's name and Dockerfile lines on ERROR, for the CLI to show as BuildKit does:
    `Dockerfile:2`, then the lines around it with `>>>` on the step's own."""
    if not error.vertex or error.vertex not in plan.lines:
        return
    first, last = plan.lines[error.vertex]
    error.step = error.step or plan.names.get(error.vertex, "")
    lines = text.splitlines()
    shown = range(max(1, first - 2), min(len(lines), last + 2) + 1)
    where = f"{dockerfile_name}:{first}" + (f"-{last}" if last != first else "")
    error.source = (where, *(f"{n:>4} | {'>>>' if first <= n <= last else '   '} {lines[n - 1]}" for n in shown))


def _no_cache_vertices(plan, stages: tuple[str, ...]) -> frozenset[str]:
    """The digests of the steps of the --no-cache-filter STAGES (names or indexes), as BuildKit."""
    if not stages:
        return frozenset()
    wanted = {s.lower() for s in stages}
    known = {name for stage in plan.stage_of.values() for name in stage}
    missing = sorted(wanted - known)
    if missing:
        raise BuildError(f'--no-cache-filter: no stage named "{missing[0]}" among the stages this build runs')
    return frozenset(digest for digest, names in plan.stage_of.items() if wanted & set(names))


def _assemble(plan, results, store, epoch, inline_cache: str = ""):
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
    # A base image's own inline cache is not this image's: only --cache-to type=inline sets one.
    config = replace(base, created=created, diff_ids=tuple(l.diff_id for l in layers), history=tuple(history),
                     inline_cache=inline_cache)
    descriptors = [Descriptor(l.media_type, l.digest, l.size) for l in layers]
    return write_image(store.blobs, config, descriptors)


def _export(output, image, store, tags, progress, export_id, mounts: dict | None = None) -> None:
    from builder.image import exporters
    from builder.registry.reference import parse_reference

    dest = output.get("dest")
    # name= names the image inside an archive (RepoTags, ref.name, containerd's name); -t otherwise.
    names = tuple(str(parse_reference(n)) for n in output.get("name").split(",") if n) or tags
    if output.type == "oci":
        layout = exporters.OCIArchiveExporter if output.get("tar", "true") != "false" else exporters.OCILayoutExporter
        exporter = layout(dest, names, output.oci_mediatypes)
    elif output.type == "docker":
        exporter = exporters.DockerArchiveExporter(dest, names, output.oci_mediatypes)
    elif output.type in ("local", "tar"):
        from builder.snapshot.layers import apply_layer

        kind = exporters.LocalExporter if output.type == "local" else exporters.RootfsTarExporter
        exporter = kind(dest, apply_layer)
    elif output.type in ("image", "registry"):
        if _pushes(output):
            _push(image, store, tags, progress, export_id, output, mounts or {})
        return
    else:
        raise ExportError(f"unknown output type {output.type}")
    progress(events.Log(export_id, f"exporting to {output.type} {dest}"))
    exporter.export(image, store.blobs)


def _pushes(output) -> bool:
    return output.type in ("image", "registry") and \
        output.get("push", "false" if output.type == "image" else "true") == "true"


def _output_image(output, image, store, progress, export_id):
    """IMAGE as OUTPUT writes it: for archives and pushes, with its layers compressed as the output's
    compression attributes ask (made now, or found made earlier); as stored for the rest (the
    local store keeps layers uncompressed, so a `-t` build compresses nothing)."""
    if output.type not in ("oci", "docker") and not _pushes(output):
        return image
    from builder.snapshot.compressed import compressed_image

    wanted = output.compression
    progress(events.Log(export_id, f"exporting layers ({wanted.kind})"))
    return compressed_image(store, image, wanted)


def _push(image, store, tags, progress, export_id, output, mounts: dict) -> None:
    from builder.image.manifest import for_output
    from builder.registry.client import RegistryClient
    from builder.registry.reference import parse_reference

    insecure = (output.get("registry.insecure") == "true")
    out = for_output(store.blobs, image, output.oci_mediatypes)
    for tag in tags:
        ref = parse_reference(tag)
        client = RegistryClient(insecure_registries=(ref.registry,) if insecure else ())
        try:
            # Layers an imported registry cache on the same registry has are mounted, not sent.
            client.push(ref, store.blobs, out.data, out.image.manifest.media_type,
                        mount_from=_mounts_for(mounts, tag))
        finally:
            client.close()
        progress(events.Log(export_id, f"pushing {tag} done"))
