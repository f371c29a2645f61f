"""Variable expansion in Dockerfile words, with BuildKit's shell-word rules.

``expand_word`` expands ``$V``, ``${V}`` and the ``${V:-w}``, ``${V-w}``, ``${V:+w}``, ``${V+w}``,
``${V:?msg}``, ``${V?msg}``, ``${V#p}``, ``${V##p}``, ``${V%p}``, ``${V%%p}``, ``${V/p/r}``,
``${V//p/r}`` forms (patterns are shell globs with ``*`` and ``?``), honours single quotes, double
quotes and the escape character, and removes the quotes. Unset variables expand to nothing.
``expand_words`` also splits the result into words on unquoted whitespace.

``expand_instruction`` applies expansion to exactly the fields BuildKit expands before dispatching
an instruction (see its docstring); which variables are in scope (build args, ENV of the stage,
global ARGs for FROM) is the caller's business.
"""

from __future__ import annotations

import csv
import io
from typing import Callable, Mapping

from builder.errors import ParseError
from builder.grammar.flags import NETWORK_MODES
from builder.grammar.nodes import (
    Add,
    Arg,
    ArgDecl,
    Copy,
    Env,
    Expose,
    Flag,
    From,
    Heredoc,
    Instruction,
    Label,
    Run,
    Stopsignal,
    User,
    Volume,
    Workdir,
)
from builder.grammar.shellwords import LexOptions, WordSyntaxError, process_word, process_words
from builder.plumbing import records


class ExpansionError(ParseError):
    """A word that cannot be expanded: ``${V:?message}`` with V unset, bad substitution syntax."""


def _options(escape: str) -> LexOptions:
    if escape not in ("\\", "`"):
        raise ValueError(f"escape must be a backslash or a backtick, not {escape!r}")
    return LexOptions(escape=escape)


def expand_word(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """``word`` with variables expanded and quotes removed; whitespace is kept as is."""
    try:
        return process_word(word, env, _options(escape))
    except WordSyntaxError as err:
        raise ExpansionError(str(err)) from None


def expand_words(text: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """``text`` expanded, then split into words on unquoted whitespace (BuildKit's ProcessWords)."""
    try:
        return process_words(text, env, _options(escape))
    except WordSyntaxError as err:
        raise ExpansionError(str(err)) from None


# Heredoc bodies of COPY/ADD are expanded without quote processing, always with the backslash.
_HEREDOC_OPTIONS = LexOptions(skip_process_quotes=True)


def expand_instruction(
    node: Instruction, env: Mapping[str, str], escape: str = "\\", *, filename: str = "Dockerfile"
) -> Instruction:
    """A copy of ``node`` with variables expanded where BuildKit expands them.

    FROM (image, platform), COPY and ADD (sources, destination, ``--chown``, ``--chmod``,
    ``--from``, ``--checksum``, and the bodies of heredocs whose delimiter was not quoted), ENV and
    LABEL (names and values, quotes removed), ARG (names and defaults), EXPOSE (split into words),
    STOPSIGNAL, USER, VOLUME, WORKDIR, and RUN's ``--mount`` fields and ``--network``. RUN, CMD,
    ENTRYPOINT, SHELL, HEALTHCHECK and MAINTAINER are returned unchanged: the shell expands
    commands. Expanded heredocs come back with ``expand`` and ``chomp`` cleared, their body final.
    Errors are :class:`ExpansionError` located at the instruction's first line.
    """
    try:
        return _expand(node, lambda word: process_word(word, env, _options(escape)), env, escape)
    except WordSyntaxError as err:
        raise ExpansionError(str(err), filename=filename, line=node.start_line) from None
    except _InvalidValue as err:
        raise ExpansionError(str(err), filename=filename, line=node.start_line) from None


class _InvalidValue(ValueError):
    pass


def _with_flags(flags: tuple[Flag, ...], expand: Callable[[str], str], names: set[str]) -> tuple[Flag, ...]:
    return tuple(
        Flag(f.name, expand(f.value)) if f.name in names and f.value is not None else f for f in flags
    )


def _optional(value: str | None, expand: Callable[[str], str]) -> str | None:
    return None if value is None else expand(value)


def _expand_mount(value: str, expand: Callable[[str], str]) -> str:
    """Expand each ``key=value`` field of a ``--mount`` CSV, as BuildKit does after splitting.

    ``from`` is left as written: BuildKit resolves a mount's stage or image before expansion."""
    fields = next(csv.reader([value]), [])
    expanded = []
    for field in fields:
        key, eq, val = field.partition("=")
        expanded.append(f"{key}={expand(val)}" if eq and key.strip().lower() != "from" else field)
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(expanded)
    return out.getvalue()


def _expand_heredocs(heredocs: tuple[Heredoc, ...], env: Mapping[str, str]) -> tuple[Heredoc, ...]:
    return tuple(
        records.replace(h, content=process_word(h.data, env, _HEREDOC_OPTIONS), expand=False, chomp=False)
        if h.expand
        else h
        for h in heredocs
    )


def _expand(node: Instruction, expand: Callable[[str], str], env: Mapping[str, str], escape: str) -> Instruction:
    replace = records.replace
    match node:
        case From():
            return replace(
                node,
                image=expand(node.image),
                platform=_optional(node.platform, expand),
                flags=_with_flags(node.flags, expand, {"platform"}),
            )
        case Copy() | Add():
            changes = dict(
                sources=tuple(expand(s) for s in node.sources),
                dest=expand(node.dest),
                chown=_optional(node.chown, expand),
                chmod=_optional(node.chmod, expand),
                heredocs=_expand_heredocs(node.heredocs, env),
                # --from is never expanded: BuildKit rejects variables there (see the converter).
                flags=_with_flags(node.flags, expand, {"chown", "chmod", "checksum"}),
            )
            if isinstance(node, Add):
                changes["checksum"] = _optional(node.checksum, expand)
            return replace(node, **changes)
        case Env() | Label():
            return replace(node, pairs=tuple((expand(k), expand(v)) for k, v in node.pairs))
        case Arg():
            decls = tuple(ArgDecl(expand(a.name), _optional(a.default, expand)) for a in node.args)
            return replace(node, args=decls)
        case Expose():
            ports = tuple(word for port in node.ports for word in process_words(port, env, _options(escape)))
            return replace(node, ports=ports)
        case Volume():
            return replace(node, paths=tuple(expand(p) for p in node.paths))
        case User():
            return replace(node, user=expand(node.user))
        case Workdir():
            return replace(node, path=expand(node.path))
        case Stopsignal():
            return replace(node, signal=expand(node.signal))
        case Run():
            network = _optional(node.network, expand)
            if network is not None and network not in NETWORK_MODES:
                raise _InvalidValue(f'invalid network mode "{network}"')

            def mount(value: str) -> str:
                return _expand_mount(value, expand)

            flags = tuple(
                Flag(f.name, mount(f.value)) if f.name == "mount" and f.value is not None
                else Flag(f.name, network) if f.name == "network"
                else f
                for f in node.flags
            )  # fmt: skip
            return replace(node, mounts=tuple(mount(m) for m in node.mounts), network=network, flags=flags)
    return node
