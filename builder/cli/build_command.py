"""`build-image [build] [OPTIONS] CONTEXT`: docker build's flags over `builder.pipeline`."""

from __future__ import annotations

import argparse
import os
import sys

from builder.cli.progress_view import make_progress
from builder.cli.runner import run_command

def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="build-image", description="Build an OCI image from a Dockerfile.")
    p.add_argument("context", metavar="CONTEXT", help="build context directory")
    p.add_argument("-f", "--file", dest="dockerfile", help="name of the Dockerfile (default: CONTEXT/Dockerfile)")
    p.add_argument("-t", "--tag", action="append", default=[], help="name and optionally a tag (name:tag)")
    p.add_argument("--build-arg", action="append", default=[], metavar="KEY[=VALUE]", help="set a build-time variable")
    p.add_argument("--target", help="build this stage")
    p.add_argument("--no-cache", action="store_true", help="do not use the cache when building")
    p.add_argument("--pull", action="store_true", help="always look up base images in their registry")
    p.add_argument("-o", "--output", action="append", default=[],
                   help="output destination: type=oci|docker,dest=FILE.tar | type=local,dest=DIR | PATH")
    p.add_argument("--iidfile", help="write the image ID to this file")
    p.add_argument("--progress", choices=("auto", "plain", "tty", "quiet"), default="auto")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image ID")
    p.add_argument("--jobs", type=int, default=None, help="steps run at once (default: number of cores)")
    p.add_argument("--platform", default="linux/amd64", help="target platform (default linux/amd64)")
    p.add_argument("--root", help="store root (default: $BUILD_IMAGE_ROOT or ~/.local/share/build-image)")
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
    p.add_argument("--debug", action="store_true", help="show tracebacks")
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
    ns = _build_parser().parse_args(argv)
    quiet = ns.quiet or ns.progress == "quiet"

    def run() -> int:
        from builder.pipeline import build

        options = _options(ns)  # inside run_command: a malformed -o is one error line too
        progress = (lambda event: None) if quiet else make_progress(ns.progress)
        try:
            result = build(options, progress)
        finally:
            close = getattr(progress, "close", None)
            if close is not None:  # the tty view draws its last frame before any error line
                close()
        return _report_build(result, quiet)

    return run_command(run, ns.debug)


def _options(ns: argparse.Namespace):
    from builder.pipeline import BuildOptions, OutputSpec

    return BuildOptions(
        context=ns.context,
        dockerfile=ns.dockerfile,
        tags=tuple(ns.tag),
        build_args=_build_args(ns.build_arg),
        target=ns.target,
        no_cache=ns.no_cache,
        pull=ns.pull,
        outputs=tuple(OutputSpec.parse(o) for o in ns.output),
        iidfile=ns.iidfile,
        jobs=ns.jobs,
        root=ns.root,
        platform=ns.platform,
        insecure_registries=tuple(ns.insecure_registry),
        secrets=tuple(ns.secret),
        ssh=tuple(ns.ssh),
        network=ns.network,
        add_hosts=tuple(ns.add_host),
        allow=tuple(e for value in ns.allow for e in value.split(",") if e),
        security_opts=tuple(ns.security_opt),
        memory=ns.memory,
        pids_limit=ns.pids_limit,
        cpu_shares=ns.cpu_shares,
    )


def _report_build(result, quiet: bool) -> int:
    for warning in result.warnings:
        print(warning, file=sys.stderr)
    if quiet:
        print(result.image_id)
    return 0
