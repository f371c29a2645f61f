"""Lark trees to typed instruction nodes, with BuildKit's checks and error messages.

This is the counterpart of BuildKit's ``frontend/dockerfile/instructions/parse.go``: it knows which
flags each instruction takes, how many arguments it needs, and how its arguments split into
fields. Messages are BuildKit's wording; :class:`InstructionError` carries them to the parser,
which adds the file name and line.
"""

from __future__ import annotations

import json
import re
from typing import Callable, Iterable

from builder.grammar.flags import NETWORK_MODES, SECURITY_MODES
from builder.grammar.heredoc import HeredocMarker, parse_marker
from builder.grammar.nodes import (
    Add,
    Arg,
    ArgDecl,
    Cmd,
    Command,
    Copy,
    Entrypoint,
    Env,
    ExecCommand,
    Expose,
    Flag,
    From,
    Healthcheck,
    Heredoc,
    Instruction,
    Label,
    Maintainer,
    Onbuild,
    Run,
    Shell,
    ShellCommand,
    Stopsignal,
    User,
    Volume,
    Workdir,
)
from builder.plumbing.records import dataclass

KEYWORDS = (
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
)  # fmt: skip

HEREDOC_KEYWORDS = frozenset({"RUN", "COPY", "ADD"})
_STAGE_NAME = re.compile(r"^[a-z][a-z0-9-_.]*\Z")
_ONBUILD_PREFIX = re.compile(r"^\s*ONBUILD\s*", re.IGNORECASE)


class InstructionError(ValueError):
    """An instruction that parses but is not valid; the message is BuildKit's."""


@dataclass(frozen=True)
class Source:
    """What the parser knows about one instruction besides its tree."""

    text: str  # the logical line
    start_line: int
    end_line: int
    heredocs: tuple[Heredoc, ...] = ()  # every heredoc of the line, bodies read after it


# -- small helpers ----------------------------------------------------------------------------


def _tokens(tree, *types: str) -> list[str]:
    return [child.value for child in tree.children if getattr(child, "type", None) in types]


def _subtree(tree, *names: str):
    for child in tree.children:
        if getattr(child, "data", None) in names:
            return child
    return None


def _levenshtein(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _suggest(value: str, options: Iterable[str], case_sensitive: bool) -> str:
    """BuildKit's " (did you mean X?)" hint: the closest option within edit distance 2."""
    probe = value if case_sensitive else value.lower()
    best, best_distance = "", 3
    for option in sorted(options):
        candidate = option if case_sensitive else option.lower()
        if candidate == probe:
            return ""
        distance = _levenshtein(probe, candidate)
        if distance < best_distance:
            best, best_distance = option, distance
    if not best:
        return ""
    if not case_sensitive:
        best = best.lower() if value == value.lower() else best.upper() if value == value.upper() else best
    return f" (did you mean {best}?)"


def _go_quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


# -- flags ------------------------------------------------------------------------------------


def _unquote_flag(word: str, escape: str) -> str:
    """A flag word with quotes and escapes removed (BuildKit's extractBuilderFlags)."""
    out: list[str] = []
    quote = ""
    i = 0
    while i < len(word):
        ch = word[i]
        i += 1
        if not quote and ch in ("'", '"'):
            quote = ch
            continue
        if quote and ch == quote:
            quote = ""
            continue
        if ch == escape:
            if i == len(word):
                continue
            ch = word[i]
            i += 1
        out.append(ch)
    return "".join(out)


def _flag_words(tree, escape: str) -> tuple[Flag, ...]:
    flags_tree = _subtree(tree, "flags")
    flags = []
    for token in _tokens(flags_tree, "FLAG"):
        word = _unquote_flag(token.strip(), escape)
        name, eq, value = word[2:].partition("=")
        flags.append(Flag(name, value if eq else None))
    return tuple(flags)


BOOL, STRING, STRINGS = "bool", "string", "strings"


def _parse_flags(flags: tuple[Flag, ...], spec: dict[str, str]) -> dict[str, object]:
    """Check ``flags`` against ``spec`` (name -> kind) and return the values given, by name."""
    values: dict[str, object] = {}
    for flag in flags:
        shown = f"--{flag.name}"
        kind = spec.get(flag.name)
        if kind is None:
            raise InstructionError(f"unknown flag: {shown}{_suggest(flag.name, spec, True)}")
        if flag.name in values and kind != STRINGS:
            raise InstructionError(f"duplicate flag specified: {shown}")
        if kind == BOOL:
            if flag.value == "":
                raise InstructionError(f"missing a value on flag: {shown}")
            value = (flag.value or "true").lower()
            if value not in ("true", "false"):
                raise InstructionError(f"expecting boolean value for flag {shown}, not: {flag.value}")
            values[flag.name] = value == "true"
        elif flag.value is None:
            raise InstructionError(f"missing a value on flag: {shown}")
        elif kind == STRING:
            values[flag.name] = flag.value
        else:
            values.setdefault(flag.name, []).append(flag.value)  # type: ignore[union-attr]
    return values


# -- argument forms ---------------------------------------------------------------------------


def _json_list(token: str) -> tuple[str, ...]:
    # The grammar's exec-form token may start with whitespace the separator did not take (a form
    # feed, U+0085, U+2028): Go's parser skips it too.
    try:
        return tuple(json.loads(token.strip()))
    except ValueError:
        raise InstructionError(f"invalid JSON array: {token.strip()}") from None


def _reject_non_string_json(text: str) -> None:
    """BuildKit: a valid JSON array with non-strings is an error, not shell form."""
    if not text.startswith("["):
        return
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # not JSON (Go also gives up on very deep nesting)
        return
    if isinstance(value, list):
        raise InstructionError("when using JSON array syntax, arrays must be comprised of strings only")


def _reject_constant(name: str):
    raise ValueError(name)  # NaN/Infinity are not JSON to Go either


def _command(tree) -> Command | None:
    """The exec or shell form under ``tree``, or None when there is no argument."""
    node = _subtree(tree, "exec_form", "shell_form")
    if node is None:
        return None
    token = node.children[0].value
    if node.data == "exec_form":
        return ExecCommand(_json_list(token))
    text = token.strip()
    _reject_non_string_json(text)
    return ShellCommand(text)


def _words(tree) -> list[str]:
    return [token.strip() for token in _tokens(tree, "WORD")]


def _maybe_json_list(tree) -> list[str]:
    """COPY/ADD/VOLUME arguments: a JSON array's strings, or the whitespace-separated words."""
    node = _subtree(tree, "exec_form", "source_words", "words")
    if node is None:
        return []
    if node.data == "exec_form":
        return list(_json_list(node.children[0].value))
    _reject_non_string_json("".join(token.value for token in node.children).strip())
    return [token.value.strip() for token in node.children]


# -- durations (Go's time.ParseDuration) ------------------------------------------------------

_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_DURATION_PART = re.compile(r"(\d*)(?:\.(\d*))?([^\d.]*)")


def parse_duration(text: str) -> int:
    """Nanoseconds in a Go duration string such as ``1m30s`` or ``1.5h``."""
    invalid = InstructionError(f"time: invalid duration {_go_quote(text)}")
    rest, sign = text, 1
    if rest[:1] in ("-", "+"):
        sign = -1 if rest[0] == "-" else 1
        rest = rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise invalid
    total = 0
    while rest:
        match = _DURATION_PART.match(rest)
        whole, frac, unit = match.group(1), match.group(2), match.group(3)
        if not whole and not frac:
            raise invalid
        if not unit:
            raise InstructionError(f"time: missing unit in duration {_go_quote(text)}")
        if unit not in _UNITS:
            # the unit runs until the next digit or dot
            raise InstructionError(f"time: unknown unit {_go_quote(unit)} in duration {_go_quote(text)}")
        scale = _UNITS[unit]
        total += int(whole or 0) * scale
        if frac:
            total += int(frac) * scale // 10 ** len(frac)
        rest = rest[match.end():]
    return sign * total


def _interval(values: dict[str, object], name: str) -> int:
    text = values.get(name)
    if not text:
        return 0
    duration = parse_duration(str(text))
    if duration == 0:
        return 0
    if duration < 1_000_000:
        raise InstructionError(f"Interval {_go_quote(name)} cannot be less than 1ms")
    return duration


# -- the instructions -------------------------------------------------------------------------


class InstructionBuilder:
    """Builds typed nodes from parse trees for one file (its escape character)."""

    def __init__(self, escape: str):
        self.escape = escape
        self._builders: dict[str, Callable[..., Instruction]] = {
            "from_instr": self._from,
            "run_instr": self._run,
            "cmd_instr": self._cmd,
            "entrypoint_instr": self._entrypoint,
            "shell_instr": self._shell,
            "copy_instr": self._copy,
            "add_instr": self._add,
            "volume_instr": self._volume,
            "env_instr": self._env,
            "label_instr": self._label,
            "arg_instr": self._arg,
            "expose_instr": self._expose,
            "healthcheck_instr": self._healthcheck,
            "maintainer_instr": self._maintainer,
            "user_instr": self._user,
            "workdir_instr": self._workdir,
            "stopsignal_instr": self._stopsignal,
            "onbuild_instr": self._onbuild,
            "unknown_instr": self._unknown,
        }

    def build(self, tree, source: Source) -> Instruction:
        """The node for ``tree`` (a ``start`` tree or an instruction subtree)."""
        if tree.data == "start":
            tree = tree.children[0]
        original = source.text.strip()
        return self._build(tree, source, original)

    def _build(self, tree, source: Source, original: str) -> Instruction:
        flags = _flag_words(tree, self.escape)
        common = dict(flags=flags, original=original, start_line=source.start_line, end_line=source.end_line)
        return self._builders[tree.data](tree, flags, common, source)

    # FROM image [AS name]
    def _from(self, tree, flags, common, source) -> From:
        args = _words(tree)
        stage = None
        if len(args) == 3 and args[1].lower() == "as":
            stage = args[2].lower()
            if not _STAGE_NAME.match(stage):
                raise InstructionError(
                    f"invalid name for build stage: {_go_quote(args[2])}, name can't start with a number or contain symbols"
                )
        elif len(args) != 1:
            raise InstructionError("FROM requires either one or three arguments")
        values = _parse_flags(flags, {"platform": STRING})
        return From(image=args[0], stage_name=stage, platform=values.get("platform"), **common)

    @staticmethod
    def _file_heredocs(markers: Iterable[HeredocMarker], source: Source) -> tuple[Heredoc, ...]:
        """COPY/ADD: each heredoc source word with its body (looked up by name, as BuildKit)."""
        bodies = {heredoc.name: heredoc.content for heredoc in source.heredocs}
        return tuple(
            Heredoc(name=m.name, content=bodies.get(m.name, ""), expand=m.expand, chomp=m.chomp, fd=m.fd)
            for m in markers
        )

    def _run(self, tree, flags, common, source) -> Run:
        values = _parse_flags(flags, {"mount": STRINGS, "network": STRING, "security": STRING, "device": STRINGS})
        network, security = values.get("network"), values.get("security")
        if network is not None and "$" not in network and network not in NETWORK_MODES:
            raise InstructionError(f"invalid network mode {_go_quote(network)}")
        if security is not None and "$" not in security and security not in SECURITY_MODES:
            raise InstructionError(f"security {_go_quote(security)} is not valid")
        command = _command(tree)
        if command is None:
            raise InstructionError("RUN requires at least one argument")
        return Run(
            command=command,
            heredocs=source.heredocs if isinstance(command, ShellCommand) else (),
            mounts=tuple(values.get("mount", ())),
            network=network,
            security=security,
            devices=tuple(values.get("device", ())),
            **common,
        )

    def _cmd(self, tree, flags, common, source) -> Cmd:
        _parse_flags(flags, {})
        command = _command(tree)
        if command is None:
            raise InstructionError("CMD requires at least one argument")
        return Cmd(command=command, **common)

    def _entrypoint(self, tree, flags, common, source) -> Entrypoint:
        _parse_flags(flags, {})
        command = _command(tree)
        if command is None:
            raise InstructionError("ENTRYPOINT requires at least one argument")
        return Entrypoint(command=command, **common)

    def _shell(self, tree, flags, common, source) -> Shell:
        _parse_flags(flags, {})
        command = _command(tree)
        if command is None or (isinstance(command, ExecCommand) and not command.args):
            raise InstructionError("SHELL requires at least one argument")
        if isinstance(command, ShellCommand):
            raise InstructionError("SHELL requires the arguments to be in JSON form")
        return Shell(args=command.args, **common)

    def _transfer(self, keyword: str, tree, flags, spec: dict[str, str], source: Source) -> tuple[dict, dict]:
        """COPY/ADD: (sources, dest and heredocs as node fields, flag values)."""
        args = _maybe_json_list(tree)
        if len(args) < 2:
            raise InstructionError(
                f"{keyword} requires at least two arguments, but only one was provided. Destination could not be determined"
            )
        values = _parse_flags(flags, spec)
        *sources, dest = args
        if parse_marker(dest) is not None:
            raise InstructionError(f"{keyword} cannot accept a heredoc as a destination")
        paths: list[str] = []
        markers: list[HeredocMarker] = []
        for word in sources:
            marker = parse_marker(word)
            if marker is None:
                paths.append(word)
            else:
                markers.append(marker)
        fields = dict(sources=tuple(paths), dest=dest, heredocs=self._file_heredocs(markers, source))
        return fields, values

    def _copy(self, tree, flags, common, source) -> Copy:
        spec = {"chown": STRING, "from": STRING, "chmod": STRING, "link": BOOL, "exclude": STRINGS, "parents": BOOL}
        fields, values = self._transfer("COPY", tree, flags, spec, source)
        return Copy(
            **fields,
            from_=values.get("from"),
            chown=values.get("chown"),
            chmod=values.get("chmod"),
            link=bool(values.get("link", False)),
            parents=bool(values.get("parents", False)),
            exclude=tuple(values.get("exclude", ())),
            **common,
        )

    def _add(self, tree, flags, common, source) -> Add:
        spec = {
            "chown": STRING, "chmod": STRING, "link": BOOL, "keep-git-dir": BOOL,
            "checksum": STRING, "unpack": BOOL, "exclude": STRINGS,
        }  # fmt: skip
        fields, values = self._transfer("ADD", tree, flags, spec, source)
        return Add(
            **fields,
            chown=values.get("chown"),
            chmod=values.get("chmod"),
            link=bool(values.get("link", False)),
            exclude=tuple(values.get("exclude", ())),
            checksum=values.get("checksum"),
            keep_git_dir=values.get("keep-git-dir"),
            unpack=values.get("unpack"),
            **common,
        )

    def _volume(self, tree, flags, common, source) -> Volume:
        args = _maybe_json_list(tree)
        if not args:
            raise InstructionError("VOLUME requires at least one argument")
        _parse_flags(flags, {})
        paths = tuple(arg.strip() for arg in args)
        if any(not path for path in paths):
            raise InstructionError("VOLUME specified can not be an empty string")
        return Volume(paths=paths, **common)

    def _pairs(self, keyword: str, tree) -> tuple[tuple[str, str], ...]:
        node = _subtree(tree, "pair_words", "legacy_pair")
        if node is None:
            raise InstructionError(f"{keyword} requires at least one argument")
        if node.data == "legacy_pair":
            name, *rest = [token.value for token in node.children]
            if not rest:
                raise InstructionError(f"{keyword} must have two arguments")
            return ((name.strip(), rest[0].strip()),)
        pairs = []
        for token in node.children:
            word = token.value.strip()
            if "=" not in word:
                raise InstructionError(
                    f"Syntax error - can't find = in {_go_quote(word)}. Must be of the form: name=value"
                )
            name, _, value = word.partition("=")
            if not name:
                raise InstructionError(f"{keyword} names can not be blank")
            pairs.append((name, value))
        return tuple(pairs)

    def _env(self, tree, flags, common, source) -> Env:
        pairs = self._pairs("ENV", tree)
        _parse_flags(flags, {})
        return Env(pairs=pairs, **common)

    def _label(self, tree, flags, common, source) -> Label:
        pairs = self._pairs("LABEL", tree)
        _parse_flags(flags, {})
        return Label(pairs=pairs, **common)

    def _arg(self, tree, flags, common, source) -> Arg:
        words = [token.strip() for token in _tokens(tree, "KV_WORD", "QWORD")]
        if not words:
            raise InstructionError("ARG requires at least one argument")
        _parse_flags(flags, {})
        decls = []
        for word in words:
            if "=" in word:
                name, _, default = word.partition("=")
                if not name:
                    raise InstructionError("ARG names can not be blank")
                decls.append(ArgDecl(name, default))
            else:
                decls.append(ArgDecl(word))
        return Arg(args=tuple(decls), **common)

    def _expose(self, tree, flags, common, source) -> Expose:
        ports = _words(tree)
        if not ports:
            raise InstructionError("EXPOSE requires at least one argument")
        _parse_flags(flags, {})
        return Expose(ports=tuple(ports), **common)

    def _healthcheck(self, tree, flags, common, source) -> Healthcheck:
        kind_words = _words(tree)
        if not kind_words:
            raise InstructionError("HEALTHCHECK requires at least one argument")
        kind = kind_words[0].upper()
        command = _command(tree)
        if kind == "NONE":
            if command is not None and not (isinstance(command, ExecCommand) and not command.args):
                raise InstructionError("HEALTHCHECK NONE takes no arguments")
            _parse_flags(flags, {})  # NONE takes no flags either
            return Healthcheck(command=None, **common)
        names = ("interval", "timeout", "start-period", "start-interval", "retries")
        values = _parse_flags(flags, dict.fromkeys(names, STRING))
        if kind != "CMD":
            raise InstructionError(f"Unknown type {_go_quote(kind)} in HEALTHCHECK (try CMD)")
        if command is None or (isinstance(command, ExecCommand) and not command.args):
            raise InstructionError("Missing command after HEALTHCHECK CMD")
        intervals = {name: _interval(values, name) for name in names[:4]}
        retries = 0
        if values.get("retries"):
            text = str(values["retries"])
            if not re.fullmatch(r"[+-]?\d+", text):
                raise InstructionError(f"strconv.ParseInt: parsing {_go_quote(text)}: invalid syntax")
            retries = int(text)
            if retries < 0:
                raise InstructionError(f"--retries cannot be negative ({retries})")
        return Healthcheck(
            command=command,
            interval=intervals["interval"],
            timeout=intervals["timeout"],
            start_period=intervals["start-period"],
            start_interval=intervals["start-interval"],
            retries=retries,
            **common,
        )

    def _one_text(self, keyword: str, tree, flags) -> str:
        text = _tokens(tree, "TEXT")
        if not text:
            raise InstructionError(f"{keyword} requires exactly one argument")
        _parse_flags(flags, {})
        return text[0].strip()

    def _maintainer(self, tree, flags, common, source) -> Maintainer:
        return Maintainer(name=self._one_text("MAINTAINER", tree, flags), **common)

    def _user(self, tree, flags, common, source) -> User:
        return User(user=self._one_text("USER", tree, flags), **common)

    def _workdir(self, tree, flags, common, source) -> Workdir:
        return Workdir(path=self._one_text("WORKDIR", tree, flags), **common)

    def _stopsignal(self, tree, flags, common, source) -> Stopsignal:
        return Stopsignal(signal=self._one_text("STOPSIGNAL", tree, flags), **common)

    def _onbuild(self, tree, flags, common, source) -> Onbuild:
        trigger_tree = next((c for c in tree.children if getattr(c, "data", "").endswith("_instr")), None)
        if trigger_tree is None:
            raise InstructionError("ONBUILD requires at least one argument")
        _parse_flags(flags, {})
        keyword = trigger_tree.children[0].value.strip().upper()
        if keyword == "ONBUILD":
            raise InstructionError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
        if keyword in ("MAINTAINER", "FROM"):
            raise InstructionError(f"{keyword} isn't allowed as an ONBUILD trigger")
        trigger_text = _ONBUILD_PREFIX.sub("", common["original"], count=1)
        trigger_source = Source(trigger_text, source.start_line, source.end_line, source.heredocs)
        trigger = self._build(trigger_tree, trigger_source, trigger_text.strip())
        return Onbuild(trigger=trigger, **common)

    def _unknown(self, tree, flags, common, source) -> Instruction:
        word = tree.children[0].value.strip()
        raise InstructionError(f"unknown instruction: {word}{_suggest(word, KEYWORDS, False)}")


def heredoc_keyword(tree) -> str | None:
    """RUN/COPY/ADD when ``tree`` (or its ONBUILD trigger) may carry heredocs, else None."""
    if tree.data == "start":
        tree = tree.children[0]
    if tree.data == "onbuild_instr":
        tree = next((c for c in tree.children if getattr(c, "data", "").endswith("_instr")), None)
        if tree is None:
            return None
    keyword = tree.children[0].value.strip().upper()
    if keyword not in HEREDOC_KEYWORDS or _subtree(tree, "exec_form") is not None:
        return None
    return keyword
