"""`build-image [build] [OPTIONS] CONTEXT`: docker build's flags over `builder.pipeline`."""

from __future__ import annotations

import argparse
import os
import sys

from builder.cli.progress_view import make_progress
from builder.cli.runner import run_command
from builder.cli.usage import UsageParser, ignored, refused

PROGRESS_MODES = ("auto", "plain", "tty", "quiet", "rawjson", "none")

_LATER = {
    "attest": "attestations (SBOM, provenance) are not built yet",
    "check": "build checks and frontend subrequests (--check, --call) are not built yet",
    "cpu": "CPU limits other than --cpu-shares are not applied to RUN steps; drop the flag",
    "swap": "RUN steps have no swap limit; drop the flag (a memory limit is -m)",
}


def _build_parser() -> argparse.ArgumentParser:
    p = UsageParser(prog="build-image build", description="Build an OCI image from a Dockerfile.")
    p.add_argument("context", metavar="CONTEXT", help="build context directory")
    p.add_argument("-f", "--file", dest="dockerfile", help="name of the Dockerfile (default: CONTEXT/Dockerfile)")
    p.add_argument("-t", "--tag", action="append", default=[], help="name and optionally a tag (name:tag)")
    p.add_argument("--build-arg", action="append", default=[], metavar="KEY[=VALUE]", help="set a build-time variable")
    p.add_argument("--target", help="build this stage")
    p.add_argument("--no-cache", action="store_true", help="do not use the cache when building")
    p.add_argument("--no-cache-filter", action="append", default=[], metavar="STAGE",
                   help="do not use the cache for this stage's steps (repeatable, comma-separated)")
    p.add_argument("--pull", action="store_true", help="always look up base images in their registry")
    p.add_argument("-o", "--output", action="append", default=[],
                   help="output destination: type=oci|docker|tar,dest=FILE|- | type=local,dest=DIR | "
                   "type=image,name=NAME,push=true | PATH | -")
    p.add_argument("--load", action="store_true",
                   help="keep the image in the local store (it always is: named by -t)")
    p.add_argument("--push", action="store_true", help="push the image to its registry (type=image,push=true)")
    p.add_argument("--iidfile", help="write the image ID to this file")
    p.add_argument("--metadata-file", metavar="FILE", help="write the build result's metadata (buildx keys) as JSON")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="set an image label")
    p.add_argument("--annotation", action="append", default=[], metavar="[manifest:]KEY=VALUE",
                   help="add an annotation to the image manifest")
    p.add_argument("--progress", choices=PROGRESS_MODES, default=os.environ.get("BUILDKIT_PROGRESS") or "auto",
                   help="progress output: auto (tty on a terminal, else plain), plain, tty, rawjson "
                   "(BuildKit SolveStatus JSON lines), quiet, none (default: $BUILDKIT_PROGRESS or auto)")
    p.add_argument("--timeline", metavar="FILE.html",
                   help="write the build as a self-contained HTML timeline (steps by worker, critical path)")
    p.add_argument("--trace", metavar="FILE.json",
                   help="write the build's steps as a Chrome trace event file (Perfetto, chrome://tracing)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image ID")
    p.add_argument("--jobs", type=int, default=None, help="steps run at once (default: number of cores)")
    p.add_argument("--platform", default="linux/amd64", help="target platform (default linux/amd64)")
    p.add_argument("--root", help="store root (default: $BUILD_IMAGE_ROOT or ~/.local/share/build-image)")
    p.add_argument("--builder", metavar="NAME", help="buildx builder instance; build-image is its own only "
                   "builder, so the name is noted and ignored")
    p.add_argument("--insecure-registry", action="append", default=[], help="use plain HTTP for this registry")
    p.add_argument("--secret", action="append", default=[], type=_flag_value(_secret_source),
                   metavar="id=ID[,src=FILE|,env=VAR]", help="a secret RUN --mount=type=secret can read")
    p.add_argument("--ssh", action="append", default=[], type=_flag_value(_ssh_source),
                   metavar="default|ID=SOCKET", help="an SSH agent socket RUN --mount=type=ssh forwards "
                   "(default: $SSH_AUTH_SOCK)")
    p.add_argument("--network", default="default", metavar="default|none|host",
                   help="network mode of RUN steps without their own --network (default: default)")
    p.add_argument("--add-host", action="append", default=[], metavar="NAME:IP",
                   help="add a line to every RUN's /etc/hosts (IP may be host-gateway)")
    p.add_argument("--allow", action="append", default=[], metavar="ENTITLEMENT",
                   help="allow an extra privilege: network.host (for RUN --network=host), "
                   "security.insecure (for --security-opt seccomp=unconfined)")
    p.add_argument("--security-opt", action="append", default=[], metavar="seccomp=unconfined",
                   help="run every RUN without the default seccomp profile (needs --allow security.insecure)")
    p.add_argument("-m", "--memory", metavar="BYTES", help="memory limit of every RUN (e.g. 512m, 2g; default: none)")
    p.add_argument("--pids-limit", type=int, default=4096, metavar="N",
                   help="process limit of every RUN (default 4096; -1: unlimited)")
    p.add_argument("--cpu-shares", type=int, default=None, metavar="N",
                   help="relative CPU weight of every RUN (1024 = default weight)")
    p.add_argument("--cgroup-parent", metavar="PATH", default=None,
                   help="the cgroup every RUN's cgroup is made under (absolute: from the hierarchy's root)")
    p.add_argument("--shm-size", metavar="BYTES", help="size of /dev/shm in RUN steps (e.g. 128m; default 64m)")
    p.add_argument("--ulimit", action="append", default=[], metavar="NAME=SOFT[:HARD]",
                   help="a resource limit for RUN steps, e.g. nofile=1024:2048 (repeatable)")
    p.add_argument("--build-context", action="append", default=[], metavar="NAME=DIR|URL|docker-image://REF|oci-layout://PATH",
                   help="a named context for FROM NAME, COPY --from=NAME and RUN --mount from=NAME (repeatable)")
    p.add_argument("--verify-reproducible", action="store_true",
                   help="build twice in fresh temporary stores, varying time, TZ, hostname, umask, jobs, "
                        "context order and paths, environment; exit 1 with a report if the images differ")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="with --verify-reproducible: the report as text or json")
    p.add_argument("--cache-from", action="append", default=[], type=_flag_value(_cache_import),
                   metavar="type=registry,ref=REF|type=local,src=DIR|IMAGE",
                   help="import build cache from a registry, an OCI layout or an image's inline cache (repeatable)")
    p.add_argument("--cache-to", action="append", default=[], type=_flag_value(_cache_export),
                   metavar="type=registry,ref=REF|type=local,dest=DIR|type=inline[,mode=min|max]",
                   help="export the build cache to a registry, an OCI layout or the image config (repeatable)")
    p.add_argument("--debug", "-D", action="store_true", help="show tracebacks")
    # docker build's classic-builder flags that BuildKit accepts and ignores: so does build-image.
    ignored(p, "--rm", "--force-rm", why="accepted, no effect (there are no intermediate containers)")
    ignored(p, "--compress", why="accepted, no effect (the context is never sent anywhere)")
    ignored(p, "--disable-content-trust", why="accepted, no effect (as with BuildKit)")
    ignored(p, "--isolation", why="accepted, no effect; only 'default' exists on Linux", takes_value=True,
            choices=("default",))
    refused(p, "--sbom", "--provenance", "--attest", why=_LATER["attest"])
    refused(p, "--check", why=_LATER["check"], takes_value=False)
    refused(p, "--call", why=_LATER["check"])
    refused(p, "--cpu-period", "--cpu-quota", "--cpuset-cpus", "--cpuset-mems", why=_LATER["cpu"])
    refused(p, "--memory-swap", why=_LATER["swap"])
    refused(p, "--squash", why="squashing an image's layers into one is not built", takes_value=False)
    return p


def _flag_value(parse):
    """An argparse type: a malformed value is a usage error naming the flag."""
    from builder.errors import BuildError

    def convert(text: str):
        try:
            return parse(text)
        except BuildError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return convert


def _secret_source(text: str):
    from builder.session import SecretSource

    return SecretSource.parse(text)


def _cache_import(text: str):
    from builder.pipeline import CacheSpec

    return CacheSpec.parse_import(text)


def _cache_export(text: str):
    from builder.pipeline import CacheSpec

    return CacheSpec.parse_export(text)


def _ssh_source(text: str):
    from builder.session import SSHSource

    return SSHSource.parse(text)


def _build_args(values: list[str]) -> dict[str, str]:
    args = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:  # `--build-arg KEY` takes the value from the environment, as docker does
            if key not in os.environ:
                continue
            value = os.environ[key]
        args[key] = value
    return args


def cmd_build(argv: list[str]) -> int:
    parser = _build_parser()
    ns = parser.parse_args(argv)
    if ns.progress not in PROGRESS_MODES:  # from $BUILDKIT_PROGRESS, which argparse does not check
        parser.error(f'invalid progress mode "{ns.progress}" in BUILDKIT_PROGRESS '
                     f"(use {', '.join(PROGRESS_MODES)})")
    quiet = ns.quiet or ns.progress in ("quiet", "none")
    if ns.builder:
        print(f'note: --builder {ns.builder}: build-image is its own only builder; the name is ignored',
              file=sys.stderr)

    def run() -> int:
        from builder.pipeline import build

        options = _options(ns)  # inside run_command: a malformed -o is one error line too
        progress = (lambda event: None) if quiet else make_progress(ns.progress)
        try:
            if ns.verify_reproducible:
                from builder.verify import verify_reproducible

                verified = verify_reproducible(options, progress)
            else:
                result = build(options, progress)
        finally:
            close = getattr(progress, "close", None)
            if close is not None:  # the tty view draws its last frame before any error line
                close()
        if ns.verify_reproducible:
            from builder.cli.diff_command import report_verification

            return report_verification(verified, ns.format)
        return _report_build(result, ns.quiet or ns.progress == "quiet")

    code = run_command(run, ns.debug)
    global finished_build
    finished_build = True
    return code


# Set once a local build (done or failed) is over: main() may then end the process without the
# interpreter's teardown (see builder.cli._end_without_teardown).
finished_build = False


def _options(ns: argparse.Namespace):
    from builder.errors import BuildError
    from builder.pipeline import BuildOptions, OutputSpec

    outputs = [OutputSpec.parse(o) for o in ns.output]
    if ns.push:
        if not ns.tag:
            raise BuildError("tag is needed when pushing to registry (--push needs -t NAME)")
        outputs.append(OutputSpec("image", (("push", "true"),)))
    if len([o for o in outputs if o.get("dest") == "-"]) > 1:
        raise BuildError("only one output can write to stdout (dest=-)")
    return BuildOptions(
        context=ns.context,
        dockerfile=ns.dockerfile,
        tags=tuple(ns.tag),
        build_args=_build_args(ns.build_arg),
        target=ns.target,
        no_cache=ns.no_cache,
        no_cache_filter=tuple(s for value in ns.no_cache_filter for s in value.split(",") if s),
        pull=ns.pull,
        outputs=tuple(outputs),
        iidfile=ns.iidfile,
        metadata_file=ns.metadata_file,
        labels=_key_values(ns.label, "label"),
        annotations=tuple(ns.annotation),
        jobs=ns.jobs,
        root=ns.root,
        platform=ns.platform,
        insecure_registries=tuple(ns.insecure_registry),
        secrets=tuple(ns.secret),
        ssh=tuple(ns.ssh),
        network=ns.network,
        add_hosts=tuple(ns.add_host),
        allow=tuple(e for value in ns.allow for e in value.split(",") if e),
        shm_size=ns.shm_size,
        ulimits=tuple(ns.ulimit),
        build_contexts=tuple(ns.build_context),
        security_opts=tuple(ns.security_opt),
        memory=ns.memory,
        pids_limit=ns.pids_limit,
        cpu_shares=ns.cpu_shares,
        timeline=ns.timeline,
        trace=ns.trace,
        cgroup_parent=ns.cgroup_parent or None,
        cache_from=tuple(ns.cache_from),
        cache_to=tuple(ns.cache_to),
    )


def _key_values(values: list[str], flag: str) -> dict[str, str]:
    """`KEY=VALUE` words (a bare KEY is an empty value, as docker's --label)."""
    from builder.errors import BuildError

    pairs = {}
    for item in values:
        key, _, value = item.partition("=")
        if not key:
            raise BuildError(f'invalid {flag} "{item}": the key is empty')
        pairs[key] = value
    return pairs


def _report_build(result, quiet: bool) -> int:
    for warning in result.warnings:
        print(warning, file=sys.stderr)
    if quiet:
        # With `-o -` the archive is stdout; the ID goes where the progress would have.
        print(result.image_id, file=sys.stderr if result.wrote_stdout else sys.stdout)
    return 0
