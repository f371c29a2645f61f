"""Typed Dockerfile instructions: what the parser produces and the converter consumes.

Values are raw, as BuildKit keeps them after parsing: variables are not expanded and quotes
that later word processing removes are still there (``ENV A="x y"`` has the value ``"x y"``).
:func:`builder.expand.expand_instruction` turns a node into its expanded twin, per stage.

Every node is a frozen, keyword-only dataclass. ``keyword`` is a class attribute (the upper-case
instruction name); ``original`` is the instruction's source text with continuation lines joined,
which is what BuildKit records in image history; lines are 1-based and ``end_line`` includes any
heredoc bodies.
"""

from __future__ import annotations

import re
from typing import ClassVar, Union

from builder.plumbing.records import dataclass

_LEADING_TABS = re.compile(r"^\t+", re.MULTILINE)


@dataclass(frozen=True)
class Flag:
    """One ``--name[=value]`` instruction flag, quotes and escapes removed; no ``=`` gives None."""

    name: str
    value: str | None = None

    def __str__(self) -> str:
        return f"--{self.name}" if self.value is None else f"--{self.name}={self.value}"


@dataclass(frozen=True)
class ShellCommand:
    """Shell form: the text is run with the stage's SHELL (``/bin/sh -c`` by default)."""

    text: str


@dataclass(frozen=True)
class ExecCommand:
    """Exec (JSON) form: the arguments are used as the argv, without a shell."""

    args: tuple[str, ...]


Command = Union[ShellCommand, ExecCommand]


@dataclass(frozen=True)
class Heredoc:
    """A here-document attached to RUN, COPY or ADD.

    ``content`` is the body exactly as written (every line with its newline). ``chomp`` is set for
    ``<<-`` (leading tabs are stripped, see :attr:`data`); ``expand`` is false when the delimiter
    was quoted (``<<"EOF"``, ``<<'EOF'``), meaning no variable expansion of the body. ``fd`` is the
    file descriptor written before ``<<`` (``3<<EOF``), 0 when none was given.
    """

    name: str
    content: str
    expand: bool = True
    chomp: bool = False
    fd: int = 0

    @property
    def data(self) -> str:
        """The body with ``<<-`` tab stripping applied."""
        return _LEADING_TABS.sub("", self.content) if self.chomp else self.content


@dataclass(frozen=True, kw_only=True)
class Instruction:
    keyword: ClassVar[str] = ""
    flags: tuple[Flag, ...] = ()
    original: str
    start_line: int
    end_line: int


@dataclass(frozen=True, kw_only=True)
class From(Instruction):
    keyword: ClassVar[str] = "FROM"
    image: str
    stage_name: str | None = None  # lower-cased, as BuildKit compares stage names
    platform: str | None = None


@dataclass(frozen=True, kw_only=True)
class Run(Instruction):
    keyword: ClassVar[str] = "RUN"
    command: Command
    heredocs: tuple[Heredoc, ...] = ()
    mounts: tuple[str, ...] = ()  # raw --mount values, parsed by the converter
    network: str | None = None  # None: the default network mode
    security: str | None = None  # None: sandbox
    devices: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Cmd(Instruction):
    keyword: ClassVar[str] = "CMD"
    command: Command


@dataclass(frozen=True, kw_only=True)
class Entrypoint(Instruction):
    keyword: ClassVar[str] = "ENTRYPOINT"
    command: Command


@dataclass(frozen=True, kw_only=True)
class Shell(Instruction):
    keyword: ClassVar[str] = "SHELL"
    args: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class _Transfer(Instruction):
    """What COPY and ADD share: sources (paths and heredoc files) into a destination."""

    sources: tuple[str, ...]  # paths and URLs; heredoc sources are in ``heredocs``
    dest: str
    heredocs: tuple[Heredoc, ...] = ()  # inline files, named by Heredoc.name
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Copy(_Transfer):
    keyword: ClassVar[str] = "COPY"
    from_: str | None = None
    parents: bool = False


@dataclass(frozen=True, kw_only=True)
class Add(_Transfer):
    keyword: ClassVar[str] = "ADD"
    checksum: str | None = None
    keep_git_dir: bool | None = None  # None: not given (BuildKit distinguishes it from false)
    unpack: bool | None = None


@dataclass(frozen=True, kw_only=True)
class Env(Instruction):
    keyword: ClassVar[str] = "ENV"
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True, kw_only=True)
class Label(Instruction):
    keyword: ClassVar[str] = "LABEL"
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ArgDecl:
    name: str
    default: str | None = None


@dataclass(frozen=True, kw_only=True)
class Arg(Instruction):
    keyword: ClassVar[str] = "ARG"
    args: tuple[ArgDecl, ...]


@dataclass(frozen=True, kw_only=True)
class Expose(Instruction):
    keyword: ClassVar[str] = "EXPOSE"
    ports: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Volume(Instruction):
    keyword: ClassVar[str] = "VOLUME"
    paths: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class User(Instruction):
    keyword: ClassVar[str] = "USER"
    user: str


@dataclass(frozen=True, kw_only=True)
class Workdir(Instruction):
    keyword: ClassVar[str] = "WORKDIR"
    path: str


@dataclass(frozen=True, kw_only=True)
class Stopsignal(Instruction):
    keyword: ClassVar[str] = "STOPSIGNAL"
    signal: str


@dataclass(frozen=True, kw_only=True)
class Maintainer(Instruction):
    keyword: ClassVar[str] = "MAINTAINER"
    name: str


@dataclass(frozen=True, kw_only=True)
class Onbuild(Instruction):
    keyword: ClassVar[str] = "ONBUILD"
    trigger: Instruction  # its ``original`` is the text after ONBUILD


@dataclass(frozen=True, kw_only=True)
class Healthcheck(Instruction):
    """Durations are nanoseconds and 0 means "not set" (inherit), as in the image config."""

    keyword: ClassVar[str] = "HEALTHCHECK"
    command: Command | None  # None for HEALTHCHECK NONE
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0


@dataclass(frozen=True)
class Dockerfile:
    filename: str
    directives: tuple[tuple[str, str], ...]  # (lower-case name, value), in file order
    escape: str
    instructions: tuple[Instruction, ...]

    def directive(self, name: str) -> str | None:
        """The value of parser directive ``name`` (``syntax``, ``escape``, ``check``), if given."""
        for key, value in self.directives:
            if key == name.lower():
                return value
        return None
