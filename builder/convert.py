"""Dockerfile instructions -> a graph of vertices plus the image config each stage produces.

This is build-image's dockerfile2llb: it decides *what* a build does (which ops, in which order,
with which environment) and what the resulting image config and history say. It runs nothing;
base images are consulted only for their config, through a resolver the caller passes in.
"""

from __future__ import annotations

import json
import posixpath
from typing import Mapping, Protocol, Sequence

from builder.errors import BuildError, ParseError, SolveError
from builder.expand import expand_instruction, expand_word
from builder.grammar import nodes
from builder.grammar import Dockerfile
from builder.grammar.flags import FlagSyntaxError, ModeSpec, chown_names, parse_checksum, url_filename
from builder.grammar.runmount import parse_mount, secret_defaults, ssh_defaults
from builder.image.config import Healthcheck, ImageConfig, RuntimeConfig
from builder.llb import CopyAction, ExecOp, FileOp, ImageSource, LocalSource, MkdirAction, Vertex
from builder.llb.order import OrderMemo, solve_order
from builder.llb.ops import (BindMountSpec, CacheMountSpec, MountSpec, ScriptMountSpec, SecretMountSpec, SSHMountSpec,
                             TmpfsMountSpec)
from builder.plan import HISTORY_COMMENT, BuildPlan, Stage, Step
from builder.plumbing.records import replace

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHELL = ("/bin/sh", "-c")

# Proxy variables are predefined ARGs: usable without a declaration, never recorded in history.
PROXY_ARGS = frozenset(
    n for p in ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY") for n in (p, p.lower())
)


class ImageResolver(Protocol):
    """Answers what a base image's config is; the solver later fetches its layers."""

    def resolve_config(self, ref: str, platform: str) -> tuple[str, ImageConfig]:
        """Returns (normalised reference, config) for a base image name."""
        ...


def platform_args(platform: str) -> dict[str, str]:
    os_, _, rest = platform.partition("/")
    arch, _, variant = rest.partition("/")
    values = {}
    for prefix in ("TARGET", "BUILD"):
        values[prefix + "PLATFORM"] = platform
        values[prefix + "OS"] = os_
        values[prefix + "ARCH"] = arch
        values[prefix + "VARIANT"] = variant
    return values


def go_list(items: Sequence[str]) -> str:
    """Formats like Go's %v of a []string, which BuildKit uses in some history entries: [a b]."""
    return "[" + " ".join(items) + "]"


def go_duration(ns: int) -> str:
    """Formats nanoseconds like Go's time.Duration.String(): 0s, 500ms, 1.5s, 1m30s, 1h0m0s."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)

    def decimal(value: int, unit: int) -> str:
        whole, fraction = divmod(value, unit)
        if not fraction:
            return str(whole)
        return f"{whole}." + str(fraction).rjust(len(str(unit)) - 1, "0").rstrip("0")

    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{decimal(ns, 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{decimal(ns, 1_000_000)}ms"
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    seconds = decimal(rest, 10**9) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{sign}{minutes}m{seconds}"
    return sign + seconds


def go_quote_list(args: Sequence[str]) -> str:
    """Formats like Go's %q of a []string, which BuildKit uses in history: ["a" "b"]."""
    return "[" + " ".join(json.dumps(a, ensure_ascii=False) for a in args) + "]"


def _set_env(env: tuple[str, ...], key: str, value: str) -> tuple[str, ...]:
    out, replaced = [], False
    for item in env:
        if item.partition("=")[0] == key:
            out.append(f"{key}={value}")
            replaced = True
        else:
            out.append(item)
    if not replaced:
        out.append(f"{key}={value}")
    return tuple(out)


def _env_map(env: Sequence[str]) -> dict[str, str]:
    return dict(item.partition("=")[::2] for item in env)


def _normalise_port(port: str) -> list[str]:
    number, _, proto = port.partition("/")
    proto = (proto or "tcp").lower()
    if "-" in number:
        lo, _, hi = number.partition("-")
        return [f"{p}/{proto}" for p in range(int(lo), int(hi) + 1)]
    return [f"{number}/{proto}"]


class Converter:
    def __init__(
        self,
        dockerfile: Dockerfile,
        *,
        build_args: Mapping[str, str] = {},
        target: str | None = None,
        platform: str = "linux/amd64",
        resolver: ImageResolver,
        context_excludes: Sequence[str] = (),
        network: str = "default",
        extra_hosts: Sequence[tuple[str, str]] = (),
        shm_size: int = 0,
        ulimits: Sequence[tuple[str, int, int]] = (),
        build_contexts: Mapping[str, str] = {},
        order_memo: OrderMemo | None = None,
    ):
        self.df = dockerfile
        self.order_memo = order_memo          # remembers solve orders between builds (builder.llb.order)
        self.escape = dockerfile.escape
        self.build_args = dict(build_args)
        self.target = target
        self.platform = platform
        self.network = network            # --network: the mode of every RUN without its own
        self.extra_hosts = tuple(extra_hosts)
        self.shm_size = shm_size              # --shm-size and --ulimit: every RUN's, as BuildKit's exec Meta
        self.ulimits = tuple(ulimits)
        self.stage_of: dict[str, tuple[str, ...]] = {}
        # --build-context: name -> "docker-image://REF" (an image under another name) or "local" (a directory)
        self.build_contexts = dict(build_contexts)
        self.lines: dict[str, tuple[int, int]] = {}
        self.arg_names: dict[str, tuple[str, ...]] = {}
        self.resolver = resolver
        self.context = Vertex(LocalSource("context", tuple(context_excludes)))
        self.used_args: set[str] = set()
        self.names: dict[str, str] = {self.context.digest: "[internal] load build context"}
        self.auto_args = platform_args(platform)

    # -- errors carry the Dockerfile's name and the line
    def _error(self, message: str, node: nodes.Instruction) -> ParseError:
        return ParseError(message, filename=self.df.filename, line=node.start_line)

    def convert(self) -> BuildPlan:
        global_args, stage_nodes = self._split_stages()
        target_index = self._target_index(stage_nodes)
        needed = self._needed_stages(stage_nodes, target_index, global_args)
        stages: dict[int, Stage] = {}
        for index in sorted(needed):
            from_node, body = stage_nodes[index]
            stages[index] = self._convert_stage(index, from_node, body, global_args, stages, stage_nodes)
        target = stages[target_index]
        vertices = solve_order(target.vertex, self.order_memo)
        # BUILDKIT_* arguments are options to the builder itself (BUILDKIT_CONTEXT_KEEP_GIT_DIR), never "unused".
        unused = tuple(sorted(k for k in self.build_args if k not in self.used_args and k not in PROXY_ARGS
                              and not k.startswith("BUILDKIT_")))
        return BuildPlan(target, vertices, dict(self.names), self.context, unused, dict(self.stage_of),
                         dict(self.lines), dict(self.arg_names))

    # -- stage structure
    def _split_stages(self):
        global_args: dict[str, str | None] = {}
        stages: list[tuple[nodes.From, list[nodes.Instruction]]] = []
        for node in self.df.instructions:
            if isinstance(node, nodes.From):
                stages.append((node, []))
            elif not stages:
                if not isinstance(node, nodes.Arg):
                    raise self._error(f"{node.keyword} instruction before the first FROM: "
                                      "only ARG may come before FROM", node)
                env = {k: v for k, v in global_args.items() if v is not None}
                expanded = expand_instruction(node, {**self.auto_args, **env}, self.escape)
                for decl in expanded.args:
                    value = self.build_args.get(decl.name, decl.default)
                    if decl.name in self.build_args:
                        self.used_args.add(decl.name)
                    global_args[decl.name] = value
            else:
                stages[-1][1].append(node)
        if not stages:
            raise ParseError("no build stage in current context", filename=self.df.filename)
        return global_args, stages

    def _stage_lookup(self, stage_nodes, name: str, before: int) -> int | None:
        """A stage by name (case-insensitive) or index, among those before `before`."""
        if name.isdigit():
            i = int(name)
            return i if i < before else None
        for i, (from_node, _) in enumerate(stage_nodes[:before]):
            if from_node.stage_name and from_node.stage_name.lower() == name.lower():
                return i
        return None

    @staticmethod
    def _step_prefix(stage_name: str, position: int, total: int, stage_nodes) -> str:
        """BuildKit's step label: "[stage-1 2/4]"; without the stage name when the Dockerfile has
        only one stage ("[2/4]"); the position padded to the total's width ("[ 2/12]")."""
        where = f"{stage_name} " if len(stage_nodes) > 1 else ""
        return f"[{where}{position:{len(str(total))}d}/{total}]"

    def _named_context(self, name: str, stage_nodes, node) -> Vertex | None:
        """The --build-context NAME as a source: a directory, or the image it names."""
        value = self.build_contexts.get(name)
        if value is None:
            return None
        self._no_stage_named(name, stage_nodes, node)
        if value == "local":
            return Vertex(LocalSource(name))
        ref, _config = self.resolver.resolve_config(value.removeprefix("docker-image://"), self.platform)
        return Vertex(ImageSource(ref, self.platform))

    def _no_stage_named(self, name: str, stage_nodes, node) -> None:
        if self._stage_lookup(stage_nodes, name, len(stage_nodes)) is not None:
            raise self._error(f'--build-context {name}: a stage has that name; replacing a stage with a '
                              "named context is not supported yet", node)

    def _check_stage_index(self, from_: str, stage: Stage, stage_nodes, node) -> None:
        """A number in --from/from= names a stage, never an image (BuildKit: `invalid stage index`)."""
        if not from_.isdigit():
            return
        if int(from_) >= len(stage_nodes):
            raise self._error(f"invalid stage index {from_}", node)
        raise self._error(f"invalid stage index {from_}: stage {from_} is not defined before this one", node)

    def _target_index(self, stage_nodes) -> int:
        if self.target is None:
            return len(stage_nodes) - 1
        found = self._stage_lookup(stage_nodes, self.target, len(stage_nodes))
        if found is None:
            raise SolveError(f"target stage \"{self.target}\" could not be found")
        return found

    def _meta_env(self, global_args) -> dict[str, str]:
        return {**self.auto_args, **{k: v for k, v in global_args.items() if v is not None}}

    def _needed_stages(self, stage_nodes, target_index: int, global_args) -> set[int]:
        """The target and every stage it reaches through FROM, COPY --from and RUN --mount from=."""
        meta = self._meta_env(global_args)
        needed, todo = set(), [target_index]
        while todo:
            index = todo.pop()
            if index in needed:
                continue
            needed.add(index)
            from_node, body = stage_nodes[index]
            refs = [expand_word(from_node.image, meta, self.escape)]
            for node in body:
                if isinstance(node, nodes.Copy) and node.from_:
                    refs.append(node.from_)  # never expanded: see _copy_source
                if isinstance(node, nodes.Run):
                    for mount in node.mounts:
                        for part in mount.split(","):
                            key, _, value = part.partition("=")
                            if key.strip() == "from":
                                refs.append(expand_word(value, meta, self.escape))
            for ref in refs:
                dep = self._stage_lookup(stage_nodes, ref, index)
                if dep is not None:
                    todo.append(dep)
        return needed

    # -- one stage
    def _convert_stage(self, index, from_node, body, global_args, stages, stage_nodes) -> Stage:
        meta = self._meta_env(global_args)
        from_node = expand_instruction(from_node, meta, self.escape)
        named = self.build_contexts.get(from_node.image)
        if named is not None:  # FROM NAME of a --build-context: the image it names
            self._no_stage_named(from_node.image, stage_nodes, from_node)
            if named == "local":
                raise self._error(f"FROM {from_node.image}: a directory --build-context cannot be a base yet; "
                                  f"use COPY --from={from_node.image} or RUN --mount=from={from_node.image}", from_node)
            from_node = replace(from_node, image=named.removeprefix("docker-image://"))
        platform = self.platform
        if from_node.platform:  # FROM --platform: this stage's base only
            from builder.image.platform_spec import normalize_platform

            try:
                platform = normalize_platform(from_node.platform)
            except BuildError as error:
                raise BuildError(f"Dockerfile:{from_node.start_line}: FROM --platform: {error}") from None
        base = self._stage_lookup(stage_nodes, from_node.image, index)
        if base is not None:
            parent = stages[base]
            stage = Stage(index, from_node.stage_name, parent.vertex, parent.config,
                          steps=list(parent.steps), base_ref=parent.base_ref)
        elif from_node.image.lower() == "scratch":
            os_name, arch, variant = (platform.split("/") + [""])[:3]
            config = ImageConfig(os=os_name, architecture=arch, variant=variant,
                                 config=RuntimeConfig(env=(f"PATH={DEFAULT_PATH}",), working_dir="/"))
            stage = Stage(index, from_node.stage_name, None, config)
        else:
            try:
                ref, config = self.resolver.resolve_config(from_node.image, platform)
            except ParseError:
                raise
            except BuildError as error:  # a bad name, an unknown image, no such platform: name the line
                raise _at_line(error, f"{self.df.filename}:{from_node.start_line}") from None
            vertex = Vertex(ImageSource(ref, platform))
            prefix = self._step_prefix(from_node.stage_name or f"stage-{index}", 1, len(body) + 1, stage_nodes)
            self.names.setdefault(vertex.digest, f"{prefix} FROM {ref}")
            if not any(e.partition("=")[0] == "PATH" for e in config.config.env):
                config = config.with_config(env=(f"PATH={DEFAULT_PATH}",) + config.config.env)
            stage = Stage(index, from_node.stage_name, vertex, config, base_ref=ref)
        triggers = self._onbuild_triggers(stage, from_node)
        stage_total = len(body) + 1
        for node in triggers:
            self._dispatch(stage, node, global_args, stages, stage_nodes,
                           self._step_prefix(stage.display, 1, stage_total, stage_nodes))
        for position, node in enumerate(body, start=2):
            self._dispatch(stage, node, global_args, stages, stage_nodes,
                           self._step_prefix(stage.display, position, stage_total, stage_nodes))
        return stage

    def _onbuild_triggers(self, stage: Stage, from_node: nodes.From) -> list[nodes.Instruction]:
        """The base's ONBUILD triggers run first, as if written right after FROM; the new image
        does not inherit them."""
        triggers = stage.config.config.on_build
        if not triggers:
            return []
        from builder.grammar import parse_dockerfile

        self._config(stage, on_build=())
        parsed = []
        for trigger in triggers:
            try:
                node = parse_dockerfile(f"FROM scratch\n{trigger}\n", self.df.filename).instructions[-1]
            except ParseError as error:
                raise self._error(f"invalid ONBUILD trigger {trigger!r} from the base image: {error.message}",
                                  from_node) from None
            if isinstance(node, (nodes.From, nodes.Onbuild, nodes.Maintainer)):
                raise self._error(f"{node.keyword} isn't allowed as an ONBUILD trigger", from_node)
            parsed.append(replace(node, start_line=from_node.start_line, end_line=from_node.end_line))
        return parsed

    def _expansion_env(self, stage: Stage) -> dict[str, str]:
        # ENV always wins over ARG of the same name.
        # Platform ARGs live in the global scope: a stage sees them only once it declares them.
        return {**stage.args, **_env_map(stage.config.config.env)}

    def _run_env(self, stage: Stage) -> tuple[str, ...]:
        env = stage.config.config.env
        image_keys = {e.partition("=")[0] for e in env}
        extra = tuple(f"{k}={v}" for k, v in stage.args.items() if k not in image_keys)
        # Proxy settings given with --build-arg reach every RUN without an ARG (and stay out of
        # the history), as in BuildKit.
        proxies = tuple(f"{k}={v}" for k, v in sorted(self.build_args.items())
                        if k in PROXY_ARGS and k not in stage.args and k not in image_keys)
        if proxies:
            self.used_args.update(k for k in self.build_args if k in PROXY_ARGS)
        return env + extra + proxies

    def _dispatch(self, stage: Stage, node, global_args, stages, stage_nodes, label: str) -> None:
        handler = getattr(self, "_do_" + type(node).__name__.lower(), None)
        if handler is None:
            raise self._error(f"{node.keyword} is not supported yet", node)
        if not isinstance(node, (nodes.Run, nodes.Cmd, nodes.Entrypoint, nodes.Shell, nodes.Healthcheck,
                                 nodes.Onbuild, nodes.Arg)):
            node = expand_instruction(node, self._expansion_env(stage), self.escape)
        if isinstance(node, (nodes.Copy, nodes.Add, nodes.Run)):
            before = stage.vertex
            handler(stage, node, label, stages, stage_nodes)
            if stage.vertex is not None and stage.vertex is not before:
                self.lines.setdefault(stage.vertex.digest, (node.start_line, node.end_line))
        elif isinstance(node, nodes.Arg):
            handler(stage, node, global_args)
        else:
            handler(stage, node, label)

    def _config(self, stage: Stage, **changes) -> None:
        stage.config = stage.config.with_config(**changes)

    def _history(self, stage: Stage, created_by: str, vertex: Vertex | None = None) -> None:
        stage.steps.append(Step(created_by, vertex))

    def _layer(self, stage: Stage, vertex: Vertex, label: str, text: str) -> None:
        self.names.setdefault(vertex.digest, f"{label} {text}")
        self.stage_of.setdefault(vertex.digest, tuple(n for n in (stage.name and stage.name.lower(),
                                                                 str(stage.index)) if n))
        stage.vertex = vertex

    def _shell(self, stage: Stage) -> tuple[str, ...]:
        return stage.config.config.shell or DEFAULT_SHELL

    def _command_args(self, stage: Stage, command) -> tuple[str, ...]:
        if isinstance(command, nodes.ExecCommand):
            return tuple(command.args)
        return self._shell(stage) + (command.text,)

    # -- instructions
    def _do_run(self, stage: Stage, node: nodes.Run, label: str, stages=None, stage_nodes=()) -> None:
        run_node = expand_instruction(node, self._expansion_env(stage), self.escape)
        command, script = self._with_heredocs(run_node)
        args = self._command_args(stage, command)
        config = stage.config.config
        cwd = config.working_dir or "/"
        specs, mount_inputs = self._run_mounts(stage, run_node, cwd, stages or {}, stage_nodes)
        if script is not None:
            specs = specs + (script,)
        env = self._run_env(stage)
        ssh = [m for m in specs if isinstance(m, SSHMountSpec)]
        if ssh and not any(e.partition("=")[0] == "SSH_AUTH_SOCK" for e in env):
            env += (f"SSH_AUTH_SOCK={ssh[0].target}",)  # as BuildKit: the first agent is the default
        op = ExecOp(
            args=args,
            env=env,
            cwd=cwd,
            user=config.user,
            # RUN --network=default means the build's mode (--network), as in BuildKit.
            network=run_node.network if run_node.network not in (None, "default") else self.network,
            extra_hosts=self.extra_hosts,
            shm_size=self.shm_size,
            ulimits=self.ulimits,
            mounts=specs,
        )
        vertex = Vertex(op, (stage.vertex, *mount_inputs))
        image_keys = {e.partition("=")[0] for e in config.env}
        self.arg_names.setdefault(vertex.digest, tuple(k for k in (e.partition("=")[0] for e in env)
                                                        if k not in image_keys and (k in stage.args or k in PROXY_ARGS)))
        flags = "".join(f"{flag} " for flag in node.flags)
        self._layer(stage, vertex, label, f"RUN {flags}{node.command.text if isinstance(node.command, nodes.ShellCommand) else ' '.join(args)}")
        recorded = self._history_args(stage)
        prefix = f"|{len(recorded)} {' '.join(recorded)} " if recorded else ""
        self._history(stage, f"RUN {prefix}{' '.join(args)} # buildkit", vertex)

    @staticmethod
    def _history_args(stage: Stage) -> list[str]:
        """BuildKit's `RUN |N K=V ...` prefix: every ARG of the stage in declaration order, an
        unset one as `K=`, and the environment's value where an ENV of the same name wins."""
        env = _env_map(stage.config.config.env)
        return [f"{name}={env.get(name, stage.args.get(name, ''))}" for name in stage.declared
                if name not in PROXY_ARGS]

    def _run_mounts(self, stage: Stage, node: nodes.Run, cwd: str, stages, stage_nodes):
        """The mount specs of a RUN and the extra vertex inputs they read (input 0 is the root)."""
        inputs: list[Vertex | None] = []
        specs: list[MountSpec] = []

        def input_index(vertex: Vertex | None) -> int:
            if vertex not in inputs:  # one input per distinct source
                inputs.append(vertex)
            return inputs.index(vertex) + 1

        for value in node.mounts:
            try:
                mount = parse_mount(value)
                if mount.type == "secret":
                    m = secret_defaults(mount)
                    specs.append(SecretMountSpec(id=m.id, target=m.target, env=m.env or "", required=m.required,
                                                 mode=m.mode, uid=m.uid, gid=m.gid))
                    continue
                if mount.type == "ssh":
                    m = ssh_defaults(mount, sum(isinstance(s, SSHMountSpec) for s in specs))
                    specs.append(SSHMountSpec(id=m.id, target=m.target, required=m.required, mode=m.mode,
                                              uid=m.uid, gid=m.gid))
                    continue
            except FlagSyntaxError as exc:
                raise self._error(str(exc), node) from None
            target = posixpath.normpath(posixpath.join(cwd, mount.target))
            if target == "/":
                raise self._error(f'invalid mount target "{target}"', node)
            path = posixpath.normpath(posixpath.join("/", mount.source))
            if mount.type == "tmpfs":
                specs.append(TmpfsMountSpec(target, mount.size))
            elif mount.type == "cache":
                source = (input_index(self._mount_source(stage, node, mount, target, stages, stage_nodes))
                          if mount.from_ else None)
                specs.append(CacheMountSpec(
                    target, id=mount.id or target, sharing=mount.sharing or "shared", source=source,
                    path=path, mode=0o755 if mount.mode is None else mount.mode, uid=mount.uid or 0,
                    gid=mount.gid or 0, readonly=mount.readonly))
            else:
                source_vertex = (self._mount_source(stage, node, mount, target, stages, stage_nodes)
                                 if mount.from_ else self.context)
                specs.append(BindMountSpec(target, input_index(source_vertex), path, mount.readonly))
        return tuple(specs), tuple(inputs)

    def _mount_source(self, stage: Stage, node, mount, target: str, stages, stage_nodes) -> Vertex | None:
        """`from=`: a --build-context, an earlier stage (by name or index) or an image."""
        named = self._named_context(mount.from_, stage_nodes, node)
        if named is not None:
            return named
        index = self._stage_lookup(stage_nodes, mount.from_, stage.index)
        if index is not None:
            return stages[index].vertex
        if self._stage_lookup(stage_nodes, mount.from_, len(stage_nodes)) is not None:
            raise self._error(f'cannot mount from stage "{mount.from_}" to "{target}", stage needs to be '
                              "defined before current command", node)
        self._check_stage_index(mount.from_, stage, stage_nodes, node)
        ref, _config = self.resolver.resolve_config(mount.from_, self.platform)
        return Vertex(ImageSource(ref, self.platform))

    def _with_heredocs(self, node: nodes.Run) -> tuple[nodes.Command, ScriptMountSpec | None]:
        """BuildKit's rules: a RUN that is only a heredoc runs its body with the shell, or, when
        the body starts with #!, as an executable file at /dev/pipes/<name>; otherwise the shell
        gets the heredoc bodies inline, as it would read them from a script."""
        if not node.heredocs or isinstance(node.command, nodes.ExecCommand):
            return node.command, None
        text = node.command.text.strip()
        if len(node.heredocs) == 1 and text.startswith("<<") and len(text.split()) == 1:
            doc = node.heredocs[0]
            if doc.data.startswith("#!"):
                path = f"/dev/pipes/{doc.name}"
                return nodes.ShellCommand(path), ScriptMountSpec(path, doc.data)
            return nodes.ShellCommand(doc.data), None
        body = node.command.text
        for doc in node.heredocs:
            body += "\n" + doc.content.rstrip("\n") + "\n" + doc.name
        return nodes.ShellCommand(body), None

    def _copy_source(self, stage: Stage, node, stages, stage_nodes) -> Vertex | None:
        """What COPY reads local paths from: the context, an earlier stage, or an image."""
        from_ = getattr(node, "from_", None)
        if not from_:
            return self.context
        if "$" in from_:
            raise self._error("variable expansion is not supported for --from, define a new stage with FROM "
                              "using ARG from global scope as a workaround", node)
        named = self._named_context(from_, stage_nodes, node)
        if named is not None:
            return named
        index = self._stage_lookup(stage_nodes, from_, stage.index)
        if index is not None:
            return stages[index].vertex
        self._check_stage_index(from_, stage, stage_nodes, node)
        ref, _config = self.resolver.resolve_config(from_, self.platform)
        return Vertex(ImageSource(ref, self.platform))

    def _dest(self, stage: Stage, dest: str) -> str:
        """BuildKit's pathRelativeToWorkingDir: absolute, a trailing '/' (or '/.') kept; '' and '.'
        are the working directory itself."""
        workdir = stage.config.config.working_dir or "/"
        trailing = dest.endswith("/") or dest in ("", ".") or dest.endswith("/.")
        path = posixpath.normpath(posixpath.join(workdir, dest))
        return path + "/" if trailing and path != "/" else path

    def _do_copy(self, stage: Stage, node, label: str, stages, stage_nodes) -> None:
        self._transfer(stage, node, label, stages, stage_nodes)

    def _do_add(self, stage: Stage, node, label: str, stages, stage_nodes) -> None:
        self._transfer(stage, node, label, stages, stage_nodes)

    def _transfer(self, stage: Stage, node, label: str, stages, stage_nodes) -> None:
        """COPY and ADD as BuildKit's dispatchCopy: one copy action per source (local paths from
        the context, a stage or an image; URLs; heredoc files), into one layer. With --link the
        actions copy into an empty tree whose layer is then stacked on the stage (a MergeOp), so
        the layer and its cache key do not depend on what is below it."""
        from builder.llb.ops import HttpSource, InlineFile, MergeOp

        is_add = isinstance(node, nodes.Add)
        self._check_transfer_flags(node, is_add)
        if node.chmod:
            try:
                ModeSpec.parse(node.chmod)
            except FlagSyntaxError as error:
                raise self._error(str(error), node) from None
        # BuildKit copies with --link only without --chmod (it falls back to a plain copy).
        link = node.link and not node.chmod
        if link and node.chown and chown_names(node.chown):
            raise self._error(f"--chown={node.chown} uses a user or group name, which --link cannot look up "
                              "(the copy does not see the stage's /etc/passwd): use numeric ids", node)
        common = dict(dest=self._dest(stage, node.dest), chown=node.chown or "", chmod=node.chmod or "",
                      exclude=tuple(node.exclude))
        unpack = node.unpack if is_add and node.unpack is not None else is_add
        name = f"{label} {self._transfer_display(stage, node)}"
        inputs: list[Vertex | None] = [None if link else stage.vertex]
        actions: list[CopyAction] = []
        local_index = None
        for src in node.sources:
            if self._is_url(src):
                filename = url_filename(src)
                inputs.append(Vertex(HttpSource(src, filename, node.checksum or "")))
                self.names.setdefault(inputs[-1].digest, name)  # its fetch errors name the step
                actions.append(CopyAction(source=len(inputs) - 1, paths=(filename,),
                                          extract_archives=bool(is_add and node.unpack), **common))
                continue
            if local_index is None:
                inputs.append(self._copy_source(stage, node, stages, stage_nodes))
                local_index = len(inputs) - 1
            previous = actions[-1] if actions else None
            if previous is not None and previous.source == local_index:  # consecutive paths: one action
                actions[-1] = replace(previous, paths=previous.paths + (src,))
            else:
                actions.append(CopyAction(source=local_index, paths=(src,), extract_archives=unpack,
                                          parents=bool(getattr(node, "parents", False)), **common))
        for doc in node.heredocs:
            inputs.append(Vertex(InlineFile(doc.name, doc.data)))
            actions.append(CopyAction(source=len(inputs) - 1, paths=(doc.name,), **common))

        vertex = Vertex(FileOp(tuple(actions)), tuple(inputs))
        self.names.setdefault(vertex.digest, name)
        if link and stage.vertex is not None:
            stage.vertex = Vertex(MergeOp(), (stage.vertex, vertex))
        else:
            stage.vertex = vertex
        self._history(stage, self._transfer_history(node) + " # buildkit", stage.vertex)

    def _check_transfer_flags(self, node, is_add: bool) -> None:
        for src in node.sources:
            if self._is_git(src):
                raise self._error(f"{node.keyword} from a git repository is not supported yet", node)
            if self._is_url(src) and not is_add:
                raise self._error("source can't be a URL for COPY", node)
        checksum = getattr(node, "checksum", None)
        if not checksum:
            return
        if len(node.sources) != 1:
            raise self._error("checksum can't be specified for multiple sources", node)
        if not self._is_url(node.sources[0]):
            raise self._error("checksum requires HTTP(S) or Git sources", node)
        try:
            parse_checksum(checksum)
        except FlagSyntaxError as error:
            raise self._error(str(error), node) from None

    def _transfer_display(self, stage: Stage, node) -> str:
        """The progress name, as BuildKit prints it: the instruction's first line, variables
        expanded, the keyword upper-cased."""
        text = node.original.split("\n", 1)[0]
        from builder.errors import BuildError

        try:
            text = expand_word(text, self._expansion_env(stage), self.escape)
        except BuildError:
            pass
        keyword, _, rest = text.partition(" ")
        return f"{keyword.upper()} {rest}".rstrip()

    @staticmethod
    def _is_url(src: str) -> bool:
        return src.startswith(("http://", "https://"))

    @classmethod
    def _is_git(cls, src: str) -> bool:
        """A git source of ADD (not fetched yet): git@, git:// and ssh:// addresses, and http(s)
        URLs of a repository ending in .git (optionally with a #ref)."""
        if src.startswith(("git@", "git://", "ssh://")):
            return True
        return cls._is_url(src) and src.partition("#")[0].rstrip("/").endswith(".git")

    @staticmethod
    def _transfer_history(node) -> str:
        """BuildKit's commit message: the keyword, --parents, --chown, --chmod, sources, heredocs
        as <<NAME, and the destination as written (--from, --link and --exclude are not in it)."""
        words = [node.keyword]
        if getattr(node, "parents", False):
            words.append("--parents")
        if node.chown:
            words.append(f"--chown={node.chown}")
        if node.chmod:
            words.append(f"--chmod={node.chmod}")
        words += list(node.sources) + [f"<<{doc.name}" for doc in node.heredocs] + [node.dest]
        return " ".join(words)

    def _do_workdir(self, stage: Stage, node: nodes.Workdir, label: str) -> None:
        current = stage.config.config.working_dir or "/"
        path = posixpath.normpath(posixpath.join(current, node.path))
        self._config(stage, working_dir=path)
        # Created as the current USER, as BuildKit does.
        vertex = Vertex(FileOp((MkdirAction(path, 0o755, stage.config.config.user),)), (stage.vertex,))
        self._layer(stage, vertex, label, f"WORKDIR {path}")
        self._history(stage, f"WORKDIR {path}", vertex)

    def _do_env(self, stage: Stage, node: nodes.Env, label: str) -> None:
        env = stage.config.config.env
        for key, value in node.pairs:
            env = _set_env(env, key, value)
        self._config(stage, env=env)
        self._history(stage, "ENV " + " ".join(f"{k}={v}" for k, v in node.pairs))

    def _do_arg(self, stage: Stage, node: nodes.Arg, global_args) -> None:
        recorded = []
        for decl in node.args:
            env = self._expansion_env(stage)
            default = expand_word(decl.default, env, self.escape) if decl.default is not None else None
            if decl.name in self.build_args:
                value = self.build_args[decl.name]
                self.used_args.add(decl.name)
            elif default is not None:
                value = default
            elif decl.name in global_args and global_args[decl.name] is not None:
                value = global_args[decl.name]
            elif decl.name in self.auto_args:
                value = self.auto_args[decl.name]
            else:
                value = None
            if decl.name not in stage.declared:
                stage.declared.append(decl.name)
            if value is not None:
                stage.args[decl.name] = value
                recorded.append(f"{decl.name}={value}")
            else:
                recorded.append(decl.name)
        self._history(stage, "ARG " + " ".join(recorded))

    def _do_label(self, stage: Stage, node: nodes.Label, label: str) -> None:
        labels = dict(stage.config.config.labels)
        labels.update(node.pairs)
        self._config(stage, labels=tuple(sorted(labels.items())))
        self._history(stage, "LABEL " + " ".join(f"{k}={v}" for k, v in node.pairs))

    def _do_maintainer(self, stage: Stage, node: nodes.Maintainer, label: str) -> None:
        stage.config = replace(stage.config, author=node.name)
        self._history(stage, f"MAINTAINER {node.name}")

    def _do_expose(self, stage: Stage, node: nodes.Expose, label: str) -> None:
        ports = set(stage.config.config.exposed_ports)
        new = [p for port in node.ports for p in _normalise_port(port)]
        ports.update(new)
        self._config(stage, exposed_ports=tuple(sorted(ports)))
        self._history(stage, "EXPOSE " + go_list(new))

    def _do_volume(self, stage: Stage, node: nodes.Volume, label: str) -> None:
        volumes = set(stage.config.config.volumes) | set(node.paths)
        self._config(stage, volumes=tuple(sorted(volumes)))
        self._history(stage, "VOLUME " + go_list(node.paths))

    def _do_user(self, stage: Stage, node: nodes.User, label: str) -> None:
        self._config(stage, user=node.user)
        self._history(stage, f"USER {node.user}")

    def _do_stopsignal(self, stage: Stage, node: nodes.Stopsignal, label: str) -> None:
        self._config(stage, stop_signal=node.signal)
        self._history(stage, f"STOPSIGNAL {node.signal}")

    def _do_cmd(self, stage: Stage, node: nodes.Cmd, label: str) -> None:
        args = self._command_args(stage, node.command)
        self._config(stage, cmd=args)
        stage.cmd_set = True
        self._history(stage, "CMD " + go_quote_list(args))

    def _do_entrypoint(self, stage: Stage, node: nodes.Entrypoint, label: str) -> None:
        args = self._command_args(stage, node.command)
        changes = {"entrypoint": args}
        if not stage.cmd_set:
            changes["cmd"] = None  # an ENTRYPOINT resets a CMD inherited from the base image
        self._config(stage, **changes)
        self._history(stage, "ENTRYPOINT " + go_quote_list(args))

    def _do_shell(self, stage: Stage, node: nodes.Shell, label: str) -> None:
        self._config(stage, shell=tuple(node.args))
        self._history(stage, "SHELL " + go_list(node.args))

    def _do_healthcheck(self, stage: Stage, node: nodes.Healthcheck, label: str) -> None:
        if node.command is None:
            check = Healthcheck(test=("NONE",))
        else:
            if isinstance(node.command, nodes.ExecCommand):
                test = ("CMD",) + tuple(node.command.args)
            else:
                test = ("CMD-SHELL", node.command.text)
            check = Healthcheck(test=test, interval=node.interval, timeout=node.timeout,
                                start_period=node.start_period, start_interval=node.start_interval,
                                retries=node.retries)
        self._config(stage, healthcheck=check)
        # BuildKit records Go's %+v of its healthcheck struct.
        self._history(stage, f"HEALTHCHECK {{Test:{go_list(check.test)} Interval:{go_duration(check.interval)} "
                             f"Timeout:{go_duration(check.timeout)} StartPeriod:{go_duration(check.start_period)} "
                             f"StartInterval:{go_duration(check.start_interval)} Retries:{check.retries}}}")

    def _do_onbuild(self, stage: Stage, node: nodes.Onbuild, label: str) -> None:
        # Recorded in the config only: BuildKit adds no history entry for ONBUILD.
        self._config(stage, on_build=stage.config.config.on_build + (node.trigger.original,))


def _at_line(error: BuildError, where: str) -> BuildError:
    """ERROR's kind with WHERE ("Dockerfile:3") before its message; a SolveError if the kind takes more."""
    message = f"{where}: {error}"
    try:
        return type(error)(message)
    except TypeError:
        return SolveError(message)


def convert(dockerfile: Dockerfile, **options) -> BuildPlan:
    return Converter(dockerfile, **options).convert()
