"""The image lifecycle commands: docker's names, flags and output over `builder.lifecycle`.

    images, tag, rmi, inspect, history, save, load, import, export, pull, push, login, logout,
    prune, df, fsck

Argument parsing and printing only; the work is in builder/lifecycle/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import sys
import tempfile
import threading

from builder.cli.runner import EXIT_ERROR, run_command
from builder.cli.usage import UsageParser
from builder.errors import BuildError

_TRUNC_ID = 12


# --- docker's formatting ----------------------------------------------------------------------


def human_size(size: float, precision: int = 3) -> str:
    """go-units' HumanSizeWithPrecision: base 1000, `%.<precision>g` then the unit (5B, 1.23MB)."""
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
    i = 0
    while size >= 1000 and i < len(units) - 1:
        size /= 1000
        i += 1
    return f"{size:.{precision}g}{units[i]}"


def human_duration(seconds: float) -> str:
    """go-units' HumanDuration, as docker prints ages ("2 minutes", "About an hour", "3 weeks")."""
    if seconds < 1:
        return "Less than a second"
    if int(seconds) == 1:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def since(created: datetime.datetime | None) -> str:
    if created is None:
        return "N/A"
    now = datetime.datetime.now(datetime.timezone.utc)
    return human_duration((now - created).total_seconds()) + " ago"


def table(rows: list[list[str]]) -> str:
    """Columns as docker's tables align them (Go's tabwriter, min width 10, padding 3); the last
    column is not padded."""
    from builder.cli.formatter import tabwrite

    return tabwrite("\n".join("\t".join(row) for row in rows)) if rows else ""


def short_id(image_id: str, no_trunc: bool = False) -> str:
    return image_id if no_trunc else image_id.partition(":")[2][:_TRUNC_ID]


def ellipsis(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = UsageParser(prog=f"build-image {prog}", description=description)
    p.add_argument("--root", help="store root (default: $BUILD_IMAGE_ROOT or ~/.local/share/build-image)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _store(ns):
    from builder.store import Store

    return Store(ns.root)


# --- images -----------------------------------------------------------------------------------


_IMAGE_HEADERS = {
    "Containers": "CONTAINERS", "CreatedAt": "CREATED AT", "CreatedSince": "CREATED", "Digest": "DIGEST",
    "ID": "IMAGE ID", "Repository": "REPOSITORY", "SharedSize": "SHARED SIZE", "Size": "SIZE", "Tag": "TAG",
    "UniqueSize": "UNIQUE SIZE", "VirtualSize": "VIRTUAL SIZE",
}
_IMAGES_TABLE = "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
_IMAGES_TABLE_DIGESTS = "table {{.Repository}}\t{{.Tag}}\t{{.Digest}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}"
_QUIET = "{{.ID}}"


def cmd_images(argv: list[str]) -> int:
    p = _parser("images", "List images.")
    p.add_argument("repository", nargs="?", help="only this repository[:tag]")
    p.add_argument("-a", "--all", action="store_true", help="accepted for docker compatibility")
    p.add_argument("--digests", action="store_true", help="show digests")
    p.add_argument("-f", "--filter", action="append", default=[],
                   help="dangling=true|false, label=K[=V], reference=PATTERN, before=IMAGE, since=IMAGE")
    p.add_argument("--format", help="table, json, or a Go template: 'table {{.Repository}}\\t{{.Tag}}'")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate output")
    p.add_argument("-q", "--quiet", action="store_true", help="only show image IDs")
    ns = p.parse_args(argv)

    def run() -> int:
        from builder.cli.formatter import format_rows
        from builder.lifecycle.filters import parse_image_filters, select_images
        from builder.lifecycle.inventory import list_images
        from builder.lifecycle.layertar import LayerSizes

        format_ = ns.format or "table"
        if format_ == "table":
            format_ = _QUIET if ns.quiet else _IMAGES_TABLE_DIGESTS if ns.digests else _IMAGES_TABLE
        digests = ns.digests or "{{.Digest}}" in format_
        filters = parse_image_filters(ns.filter, ns.repository)
        store = _store(ns)
        with store:
            records = select_images(store, list_images(store), filters)
            sizes = LayerSizes(store)
            rows = []
            for record in records:
                size = sizes.of_image(record.image)
                for repo, tag, digest in _image_rows(record, digests, filters.references):
                    rows.append(_image_row(record, repo, tag, digest, size, ns.no_trunc))
            sizes.save()
        sys.stdout.write(format_rows(format_, rows, _IMAGE_HEADERS, _IMAGES_TABLE))
        return 0

    return run_command(run, ns.debug)


def _image_rows(record, digests: bool, patterns: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(repository, tag, digest) rows for one image, as docker's image formatter lays them out."""
    from builder.lifecycle.filters import reference_matches

    if record.dangling:
        return [("<none>", "<none>", "<none>")]
    keep = (lambda n: any(reference_matches(p, n) for p in patterns)) if patterns else (lambda n: True)
    tags: dict[str, list[str]] = {}
    repo_digests: dict[str, list[str]] = {}
    for name in filter(keep, record.repo_tags):
        repo, _, tag = name.rpartition(":")
        tags.setdefault(repo, []).append(tag)
    for name in filter(keep, record.repo_digests):
        repo, _, digest = name.partition("@")
        repo_digests.setdefault(repo, []).append(digest)
    rows = []
    for repo in sorted(tags):
        same_repo = repo_digests.pop(repo, [])  # shown beside the tags, never as rows of their own
        shown = same_repo if digests else []
        for tag in sorted(tags[repo]):
            if shown:
                rows.extend((repo, tag, d) for d in shown)
            else:
                rows.append((repo, tag, "<none>"))
    for repo in sorted(repo_digests):
        if digests:
            rows.extend((repo, "<none>", d) for d in repo_digests[repo])
        else:
            rows.append((repo, "<none>", "<none>"))
    return rows


def _image_row(record, repo: str, tag: str, digest: str, size: int, no_trunc: bool):
    """One row as docker's image formatter context offers it to templates (fields sorted, as its
    JSON is)."""
    from builder.cli.gotemplate import Struct

    created = record.created
    return Struct("image", {
        "Containers": "N/A",
        "CreatedAt": created.strftime("%Y-%m-%d %H:%M:%S +0000 UTC") if created else "",
        "CreatedSince": since(created),
        "Digest": digest,
        "ID": short_id(record.image_id, no_trunc),
        "Repository": repo,
        "SharedSize": "N/A",
        "Size": human_size(size),
        "Tag": tag,
        "UniqueSize": "N/A",
        "VirtualSize": human_size(size),
    })


# --- tag, rmi ---------------------------------------------------------------------------------


def cmd_tag(argv: list[str]) -> int:
    p = _parser("tag", "Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE.")
    p.add_argument("source", metavar="SOURCE_IMAGE[:TAG]")
    p.add_argument("target", metavar="TARGET_IMAGE[:TAG]")
    ns = p.parse_args(argv)

    def run() -> int:
        from builder.lifecycle.tagging import tag_image

        tag_image(_store(ns), ns.source, ns.target)
        return 0

    return run_command(run, ns.debug)


def cmd_rmi(argv: list[str]) -> int:
    p = _parser("rmi", "Remove one or more images.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-f", "--force", action="store_true", help="remove the image even if it has several repositories")
    ns = p.parse_args(argv)

    def run() -> int:
        from builder.lifecycle.tagging import remove_images

        failed = False
        for _, outcome in remove_images(_store(ns), ns.images, force=ns.force):
            if isinstance(outcome, BuildError):
                print(f"ERROR: {outcome}", file=sys.stderr)
                failed = True
                continue
            for name in outcome.untagged:
                print(f"Untagged: {name}")
            for image_id in outcome.deleted:
                print(f"Deleted: {image_id}")
        return EXIT_ERROR if failed else 0

    return run_command(run, ns.debug)


# --- inspect, history -------------------------------------------------------------------------


def cmd_inspect(argv: list[str]) -> int:
    p = _parser("inspect", "Display detailed information on one or more images.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-f", "--format", help="json (the default), or a Go template: '{{.Config.Env}}'")
    ns = p.parse_args(argv)

    def run() -> int:
        from builder.cli.gotemplate import Template, TemplateError
        from builder.lifecycle.describe import inspect_document
        from builder.lifecycle.inventory import find_image
        from builder.lifecycle.layertar import LayerSizes

        template = None
        if ns.format and ns.format != "json":
            try:
                template = Template(ns.format)
            except TemplateError as error:
                raise TemplateError(f"template parsing error: {error}") from None
        store = _store(ns)
        documents, errors = [], []
        with store:
            sizes = LayerSizes(store)
            for name in ns.images:
                try:
                    documents.append(inspect_document(find_image(store, name), sizes))
                except BuildError as error:
                    errors.append(error)
            sizes.save()
        if template is None:
            print(json.dumps(documents, indent=4, ensure_ascii=False))
        else:
            for document in documents:
                try:
                    print(template.execute(_inspect_value(document)))
                except TemplateError as error:
                    raise TemplateError(f"template parsing error: {error}") from None
        for error in errors:
            print(f"ERROR: {error}", file=sys.stderr)
        return EXIT_ERROR if errors else 0

    return run_command(run, ns.debug)


# Fields of docker's image inspect types that are Go slices or maps: a null one prints `[]` or
# `map[]` in a template (and stays null in its JSON); a map[string]struct{} entry prints `{}`.
_SLICE_FIELDS = frozenset({"RepoTags", "RepoDigests", "Env", "Cmd", "Entrypoint", "OnBuild", "Shell", "Layers"})
_MAP_FIELDS = frozenset({"Labels", "Volumes", "ExposedPorts"})


def _inspect_value(value, name: str = ""):
    """An inspect document as the Go values docker runs --format over: objects are structs, except
    the maps among them; an unknown field is `<no value>` (docker falls back to the raw JSON)."""
    from builder.cli.gotemplate import NIL_MAP, NIL_SLICE, Struct

    if value is None:
        return NIL_SLICE if name in _SLICE_FIELDS else NIL_MAP if name in _MAP_FIELDS else None
    if isinstance(value, list):
        return [_inspect_value(v) for v in value]
    if isinstance(value, dict):
        if name in _MAP_FIELDS:
            empty = Struct("struct {}", {})
            return {k: empty if v == {} and name != "Labels" else _inspect_value(v) for k, v in value.items()}
        return Struct(name or "image", {k: _inspect_value(v, k) for k, v in value.items()}, lenient=True)
    return value


_HISTORY_HEADERS = {"ID": "IMAGE", "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "CreatedBy": "CREATED BY",
                    "Size": "SIZE", "Comment": "COMMENT"}
_HISTORY_TABLE = "table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}"
_HISTORY_TABLE_NOT_HUMAN = "table {{.ID}}\t{{.CreatedAt}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}"


def cmd_history(argv: list[str]) -> int:
    p = _parser("history", "Show the history of an image.")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--format", help="table, json, or a Go template: 'table {{.ID}}\\t{{.CreatedBy}}'")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate output")
    p.add_argument("-q", "--quiet", action="store_true", help="only show image IDs")
    argv, human = _bool_flag(argv, ("-H", "--human"), default=True)  # -H=false, as Go's bool flags take it
    p.add_argument("-H", "--human", action="store_true", help="sizes and dates in human-readable form "
                   "(default true; -H=false for RFC 3339 dates and sizes in bytes)")
    ns = p.parse_args(argv)

    def run() -> int:
        from builder.cli.formatter import format_rows
        from builder.lifecycle.describe import history_rows
        from builder.lifecycle.inventory import find_image
        from builder.lifecycle.layertar import LayerSizes

        format_ = ns.format or "table"
        if format_ == "table":
            format_ = _QUIET if ns.quiet else _HISTORY_TABLE if human else _HISTORY_TABLE_NOT_HUMAN
        store = _store(ns)
        with store:
            sizes = LayerSizes(store)
            rows = history_rows(find_image(store, ns.image), sizes)
            sizes.save()
        contexts = [_history_row(row, human, ns.no_trunc) for row in rows]
        sys.stdout.write(format_rows(format_, contexts, _HISTORY_HEADERS, _HISTORY_TABLE))
        return 0

    return run_command(run, ns.debug)


def _history_row(row, human: bool, no_trunc: bool):
    """One history entry as docker's history formatter context offers it to templates."""
    from builder.cli.gotemplate import Struct

    created_at = _rfc3339(row.created) if row.created else "0001-01-01T00:00:00Z"
    created_by = row.created_by.replace("\t", " ")
    return Struct("history", {
        "Comment": row.comment,
        "CreatedAt": created_at,
        "CreatedBy": created_by if no_trunc else ellipsis(created_by, 45),
        "CreatedSince": since(row.created) if human else created_at,
        "ID": short_id(row.image_id, no_trunc) if row.image_id else "<missing>",
        "Size": human_size(row.size) if human else str(row.size),
    })


def _rfc3339(moment: datetime.datetime) -> str:
    """Go's time.RFC3339 in local time, as docker prints CreatedAt."""
    local = moment.astimezone()
    text = local.strftime("%Y-%m-%dT%H:%M:%S%z")
    if text.endswith("+0000"):
        return text[:-5] + "Z"
    return f"{text[:-2]}:{text[-2:]}"


def _bool_flag(argv: list[str], names: tuple[str, ...], default: bool) -> tuple[list[str], bool]:
    """Take a Go-style bool flag out of ARGV: `-H` is true, `-H=false` / `--human=0` set it; argparse
    then only sees the bare flag."""
    value = default
    rest = []
    for arg in argv:
        name, sep, text = arg.partition("=")
        if name in names and sep:
            parsed = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}.get(text.lower())
            if parsed is None or text not in (text.lower(), text.upper(), text.capitalize()):
                raise SystemExit(_usage_error(f'invalid argument "{text}" for "{", ".join(names)}" flag: '
                                              f'strconv.ParseBool: parsing "{text}": invalid syntax'))
            value = parsed
            continue
        if arg in names:
            value = True
        rest.append(arg)
    return rest, value


def _usage_error(message: str) -> int:
    print(f"ERROR: {message}", file=sys.stderr)
    return EXIT_ERROR


# --- save, load, import, export ---------------------------------------------------------------


def _refuse_terminal(stream, what: str) -> None:
    if stream.isatty():
        raise BuildError(f"cowardly refusing to {what} a terminal. Use the -o flag or redirect")


def _to_file_or_stdout(output: str | None, write) -> None:
    """WRITE(path) to OUTPUT, or to a temp file then standard output (never a half archive on a tty)."""
    if output and output != "-":
        write(output)
        return
    _refuse_terminal(sys.stdout, "save to")
    with tempfile.TemporaryDirectory(prefix="build-image-") as tmp:
        path = os.path.join(tmp, "out.tar")
        write(path)
        sys.stdout.flush()
        with open(path, "rb") as f:
            shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
        sys.stdout.buffer.flush()


def cmd_save(argv: list[str]) -> int:
    p = _parser("save", "Save one or more images to a tar archive (streamed to STDOUT by default).")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-o", "--output", help="write to a file, instead of STDOUT")
    p.add_argument("--format", choices=("docker", "oci"), default="docker", help="archive format (default docker)")
    ns = p.parse_args(argv)

    def run() -> int:
        from builder.lifecycle.image_archive import save_images

        store = _store(ns)
        _to_file_or_stdout(ns.output, lambda path: save_images(store, ns.images, path, ns.format))
        return 0

    return run_command(run, ns.debug)


def cmd_load(argv: list[str]) -> int:
    p = _parser("load", "Load images from a tar archive or STDIN.")
    p.add_argument("-i", "--input", help="read from a tar archive file, instead of STDIN")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="suppress progress output (there is none; `Loaded image:` lines are printed, as docker)")
    ns = p.parse_args(argv)

    def run() -> int:
        from builder.lifecycle.image_archive import load_archive

        store = _store(ns)
        if ns.input and ns.input != "-":
            try:
                stream = open(ns.input, "rb")
            except OSError as e:
                raise BuildError(f"open {ns.input}: {e.strerror.lower()}") from None
            source = ns.input
        else:
            if sys.stdin.isatty():
                raise BuildError("requested load from stdin, but stdin is empty")
            stream, source = sys.stdin.buffer, "stdin"
        with stream:
            loaded = load_archive(store, stream, source)
        from builder.lifecycle.inventory import familiar

        for image in loaded:  # docker prints these with -q too: -q only silences its progress bars
            for name in image.names:
                print(f"Loaded image: {familiar(name)}")
            if not image.names:
                print(f"Loaded image ID: {image.image_id}")
        return 0

    return run_command(run, ns.debug)


def cmd_import(argv: list[str]) -> int:
    p = _parser("import", "Import the contents from a tarball to create a filesystem image.")
    p.add_argument("file", metavar="file|-")
    p.add_argument("name", nargs="?", metavar="REPOSITORY[:TAG]")
    p.add_argument("-c", "--change", action="append", default=[], help="apply a Dockerfile instruction to the image")
    p.add_argument("-m", "--message", default="", help="set the commit message for the imported image")
    ns = p.parse_args(argv)

    def run() -> int:
        from builder.lifecycle.rootfs import import_rootfs

        store = _store(ns)
        if ns.file == "-":
            stream = sys.stdin.buffer
        else:
            try:
                stream = open(ns.file, "rb")
            except OSError as e:
                raise BuildError(f"open {ns.file}: {e.strerror.lower()}") from None
        with stream:
            image = import_rootfs(store, stream, name=ns.name, changes=ns.change, message=ns.message,
                                  source="-")
        print(image.image_id)
        return 0

    return run_command(run, ns.debug)


def cmd_export(argv: list[str]) -> int:
    p = _parser("export", "Export an image's root filesystem as a tar archive (docker exports containers).")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("-o", "--output", help="write to a file, instead of STDOUT")
    ns = p.parse_args(argv)

    def run() -> int:
        from builder.lifecycle.rootfs import export_rootfs

        store = _store(ns)
        _to_file_or_stdout(ns.output, lambda path: export_rootfs(store, ns.image, path))
        return 0

    return run_command(run, ns.debug)


# --- pull, push, login, logout ----------------------------------------------------------------


def _layer_printer(quiet: bool):
    lock = threading.Lock()

    def show(event) -> None:
        if quiet:
            return
        with lock:
            print(f"{event.digest.partition(':')[2][:_TRUNC_ID]}: {event.status}", flush=True)

    return show


def cmd_pull(argv: list[str]) -> int:
    p = _parser("pull", "Download an image from a registry.")
    p.add_argument("name", metavar="NAME[:TAG|@DIGEST]")
    p.add_argument("-a", "--all-tags", action="store_true", help="download all tagged images in the repository")
    p.add_argument("--platform", default="linux/amd64", help="platform (default linux/amd64)")
    p.add_argument("--insecure-registry", action="append", default=[], help="use plain HTTP for this registry")
    p.add_argument("-q", "--quiet", action="store_true", help="suppress verbose output")
    ns = p.parse_args(argv)

    def run() -> int:
        from builder.image.media import Platform
        from builder.lifecycle.distribution import pull, pull_all_tags
        from builder.registry.reference import parse_reference

        os_, _, rest = ns.platform.partition("/")
        arch, _, variant = rest.partition("/")
        platform = Platform(os_ or "linux", arch or "amd64", variant)
        if ns.all_tags:
            return _pull_all_tags(pull_all_tags(_store(ns), ns.name, platform=platform,
                                                insecure_registries=ns.insecure_registry), ns.quiet)
        ref = parse_reference(ns.name)
        last = ns.name.rpartition("/")[2]
        if not ns.quiet:
            if ":" not in last and "@" not in last:
                print("Using default tag: latest")
            print(f"{ref.digest or ref.tag}: Pulling from {ref.repository}", flush=True)
        result = pull(_store(ns), ns.name, platform=platform,
                      insecure_registries=ns.insecure_registry, events=_layer_printer(ns.quiet))
        if not ns.quiet:
            print(f"Digest: {result.manifest_digest}")
            if result.up_to_date:
                print(f"Status: Image is up to date for {ref.familiar}")
            else:
                print(f"Status: Downloaded newer image for {ref.familiar}")
        print(str(ref))
        return 0

    return run_command(run, ns.debug)


def _pull_all_tags(pulled, quiet: bool) -> int:
    """docker's output for `pull -a`: each tag's block in the registry's order, one status line,
    then the repository's name."""
    if not quiet:
        show = _layer_printer(False)
        for tag in pulled.tags:
            print(f"{tag.result.reference.tag}: Pulling from {pulled.repository.repository}")
            for event in tag.layers:
                show(event)
            print(f"Digest: {tag.result.manifest_digest}")
        status = "Image is up to date for" if pulled.up_to_date else "Downloaded newer image for"
        print(f"Status: {status} {pulled.repository.familiar}")
    print(str(pulled.repository))
    return 0


def cmd_push(argv: list[str]) -> int:
    p = _parser("push", "Upload an image to a registry.")
    p.add_argument("name", metavar="NAME[:TAG]")
    p.add_argument("--insecure-registry", action="append", default=[], help="use plain HTTP for this registry")
    p.add_argument("-q", "--quiet", action="store_true", help="suppress verbose output")
    ns = p.parse_args(argv)

    def run() -> int:
        from builder.lifecycle.distribution import push
        from builder.registry.reference import parse_reference

        ref = parse_reference(ns.name)
        if not ns.quiet:
            print(f"The push refers to repository [{ref.name}]", flush=True)
        result = push(_store(ns), ns.name, insecure_registries=ns.insecure_registry,
                      events=_layer_printer(ns.quiet))
        if not ns.quiet:
            print(f"{ref.tag}: digest: {result.manifest_digest} size: {result.manifest_size}")
        else:
            print(ref.familiar)
        return 0

    return run_command(run, ns.debug)


def cmd_login(argv: list[str]) -> int:
    p = _parser("login", "Log in to a registry (Docker Hub when no server is given).")
    p.add_argument("server", nargs="?", default="docker.io", metavar="SERVER")
    p.add_argument("-u", "--username", help="username")
    p.add_argument("-p", "--password", help="password")
    p.add_argument("--password-stdin", action="store_true", help="take the password from stdin")
    p.add_argument("--insecure-registry", action="append", default=[], help="use plain HTTP for this registry")
    ns = p.parse_args(argv)

    def run() -> int:
        from builder.lifecycle.distribution import login

        password = ns.password
        if ns.password_stdin:
            if ns.password:
                raise BuildError("--password and --password-stdin are mutually exclusive")
            if not ns.username:
                raise BuildError("Must provide --username with --password-stdin")
            password = sys.stdin.read().rstrip("\r\n")
        elif ns.password:
            print("WARNING! Using --password via the CLI is insecure. Use --password-stdin.", file=sys.stderr)
        username = ns.username
        if not username or password is None:
            if not sys.stdin.isatty():
                raise BuildError("Cannot perform an interactive login from a non TTY device")
            import getpass

            username = username or input("Username: ").strip()
            password = password if password is not None else getpass.getpass("Password: ")
        if not username or not password:
            raise BuildError("Error: Username and password are required" if not username else
                             "Error: Password Required")
        result = login(ns.server, username, password, insecure_registries=ns.insecure_registry)
        if result.saved_to.startswith("/"):
            print(f"WARNING! Your password will be stored unencrypted in {result.saved_to}.\n"
                  "Configure a credential helper to remove this warning. See\n"
                  "https://docs.docker.com/engine/reference/commandline/login/#credentials-store\n",
                  file=sys.stderr)
        print("Login Succeeded")
        return 0

    return run_command(run, ns.debug)


def cmd_logout(argv: list[str]) -> int:
    p = _parser("logout", "Log out from a registry (Docker Hub when no server is given).")
    p.add_argument("server", nargs="?", default="docker.io", metavar="SERVER")
    ns = p.parse_args(argv)

    def run() -> int:
        from builder.lifecycle.distribution import logout

        registry, removed = logout(ns.server)
        shown = "https://index.docker.io/v1/" if registry == "docker.io" else registry
        print(f"Removing login credentials for {shown}" if removed else f"Not logged in to {shown}")
        return 0

    return run_command(run, ns.debug)


# --- prune, df, fsck --------------------------------------------------------------------------


def parse_until(value: str) -> datetime.datetime:
    """docker's `until` filter: a Go duration before now (`24h`, `1h30m`), a Unix time or RFC 3339."""
    now = datetime.datetime.now(datetime.timezone.utc)
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", value)
    if parts and "".join(n + u for n, u in parts) == value:
        return now - datetime.timedelta(seconds=sum(float(n) * units[u] for n, u in parts))
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return datetime.datetime.fromtimestamp(float(value), datetime.timezone.utc)
    from builder.lifecycle.inventory import parse_time

    parsed = parse_time(value) or parse_time(value + "Z") or parse_time(value + "T00:00:00Z")
    if parsed is None:
        raise BuildError(f"invalid filter 'until={value}': want a duration (24h), a Unix time or RFC 3339")
    return parsed


def cmd_prune(argv: list[str]) -> int:
    p = _parser("prune", "Remove unused images, blobs and snapshots (with --cache, the build cache too).")
    p.add_argument("-a", "--all", action="store_true", help="remove all images, not just dangling ones")
    p.add_argument("--cache", action="store_true", help="also remove the build cache")
    p.add_argument("--filter", action="append", default=[], help="until=DURATION|TIMESTAMP")
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    ns = p.parse_args(argv)

    def run() -> int:
        from builder.lifecycle.gc import prune

        until = None
        for item in ns.filter:
            key, sep, value = item.partition("=")
            if key != "until" or not sep:
                raise BuildError(f"invalid filter '{item}'")
            until = parse_until(value)
        if not ns.force:
            what = ["all images without at least one container associated to them" if ns.all
                    else "all dangling images"]
            if ns.cache:
                what.append("all build cache")
            print("WARNING! This will remove:\n" + "".join(f"  - {w}\n" for w in what)
                  + "Are you sure you want to continue? [y/N] ", end="", flush=True)
            answer = sys.stdin.readline().strip().lower()
            if answer not in ("y", "yes"):
                print("Total reclaimed space: 0B")
                return 0
        report = prune(_store(ns), all_images=ns.all, cache=ns.cache, until=until)
        if report.untagged or report.deleted_images:
            print("Deleted Images:")
            for name in report.untagged:
                print(f"untagged: {name}")
            for image_id in report.deleted_images:
                print(f"deleted: {image_id}")
            print()
        if report.deleted_cache:
            print("Deleted build cache objects:")
            for key in report.deleted_cache:
                print(short_id(key, False))
            print()
        print(f"Total reclaimed space: {human_size(report.reclaimed, 4)}")
        return 0

    return run_command(run, ns.debug)


def cmd_df(argv: list[str]) -> int:
    p = _parser("df", "Show the store's disk usage.")
    ns = p.parse_args(argv)

    def run() -> int:
        from builder.lifecycle.gc import disk_usage

        body = [["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]]
        for row in disk_usage(_store(ns)):
            reclaimable = human_size(row.reclaimable, 4)
            if row.kind != "Build Cache" and row.size > 0:
                reclaimable += f" ({row.reclaimable * 100 // row.size}%)"
            body.append([row.kind, str(row.total), str(row.active), human_size(row.size, 4), reclaimable])
        print(table(body))
        return 0

    return run_command(run, ns.debug)


def cmd_fsck(argv: list[str]) -> int:
    p = _parser("fsck", "Verify every blob and reference in the store.")
    p.add_argument("--repair", action="store_true", help="remove what is broken")
    ns = p.parse_args(argv)

    def run() -> int:
        from builder.lifecycle.gc import fsck

        problems = fsck(_store(ns), repair=ns.repair)
        for problem in problems:
            print(str(problem))
        unrepaired = [p for p in problems if not p.repaired]
        if not problems:
            print("no problems found")
        elif unrepaired:
            print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found, "
                  f"{len(problems) - len(unrepaired)} repaired", file=sys.stderr)
            return EXIT_ERROR
        else:
            print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found and repaired")
        return 0

    return run_command(run, ns.debug)
