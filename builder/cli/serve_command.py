"""`build-image serve`: the build service's flags; the service itself is builder.service."""

from __future__ import annotations

from builder.cli.usage import UsageParser


def _parser():
    from builder.service.protocol import DEFAULT_SOCKET

    p = UsageParser(prog="build-image serve", description="Run the build service: many users, one warm server.")
    p.add_argument("--listen", action="append", default=[], metavar="unix:///PATH|tcp://HOST:PORT",
                   help=f"where to listen (repeatable; default {DEFAULT_SOCKET}); tcp needs --tls-cert and --tls-key")
    p.add_argument("--tls-cert", metavar="FILE", help="the server's certificate (PEM) for tcp:// listeners")
    p.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    p.add_argument("--tls-client-ca", metavar="FILE", help="also require client certificates signed by this CA")
    p.add_argument("--root", help="store root (default: $BUILD_IMAGE_ROOT or ~/.local/share/build-image)")
    p.add_argument("--max-builds", type=int, default=2, metavar="N",
                   help="builds run at once (default 2); more wait, queued fairly across users")
    p.add_argument("--pam-service", default="build-image", metavar="NAME",
                   help="the PAM service that checks passwords over TCP (default build-image)")
    p.add_argument("--socket-group", metavar="GROUP", help="the unix socket's group (its mode is --socket-mode)")
    p.add_argument("--socket-mode", default="660", metavar="OCTAL", help="the unix socket's mode (default 660)")
    p.add_argument("--login-attempts", type=int, default=5, metavar="N",
                   help="failed logins a minute, per user and per address, before further ones are refused (default 5)")
    p.add_argument("--memory", metavar="BYTES", help="every build's RUN memory limit: the default and the most a "
                   "client may ask (e.g. 2g; default: none)")
    p.add_argument("--pids-limit", type=int, default=4096, metavar="N",
                   help="every build's RUN process limit: the default and the most (default 4096)")
    p.add_argument("--cpu-shares", type=int, metavar="N", help="every build's default RUN CPU weight")
    p.add_argument("--jobs", type=int, metavar="N", help="the most steps one build runs at once")
    p.add_argument("--isolate-cache", action="store_true",
                   help="keep each user's build cache apart (default: shared; keys are the server's own)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def cmd_serve(argv: list[str]) -> int:
    parser = _parser()
    ns = parser.parse_args(argv)
    try:
        mode = int(ns.socket_mode, 8)
    except ValueError:
        parser.error(f'invalid --socket-mode "{ns.socket_mode}": an octal mode such as 660')
    if ns.max_builds < 1:
        parser.error("--max-builds must be at least 1")

    def run() -> int:
        import os

        from builder.cli import images, run_local  # noqa: F401  (imported now: the workers inherit it)
        from builder.pipeline import parse_memory
        from builder.service.protocol import DEFAULT_SOCKET, parse_address
        from builder.service.server import Config, serve
        from builder.store import default_root

        listen = tuple(ns.listen) or (DEFAULT_SOCKET,)
        for address in listen:
            try:
                kind, _, _ = parse_address(address)
            except ValueError as error:
                parser.error(str(error))
            if kind == "tcp" and not (ns.tls_cert and ns.tls_key):
                parser.error(f"{address}: a tcp listener needs --tls-cert and --tls-key (TLS always)")
        limits = {"memory": parse_memory(ns.memory) if ns.memory else None,
                  "pids": ns.pids_limit if ns.pids_limit and ns.pids_limit > 0 else None,
                  "cpu_shares": ns.cpu_shares, "jobs": ns.jobs}
        config = Config(root=os.path.abspath(ns.root or default_root()), listen=listen, tls_cert=ns.tls_cert,
                        tls_key=ns.tls_key, tls_client_ca=ns.tls_client_ca, max_builds=ns.max_builds,
                        pam_service=ns.pam_service, socket_mode=mode, socket_group=ns.socket_group,
                        login_attempts=ns.login_attempts, isolate_cache=ns.isolate_cache, limits=limits)
        return serve(config, run_local)

    from builder.cli.runner import run_command

    return run_command(run, ns.debug)
