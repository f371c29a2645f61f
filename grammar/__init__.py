"""The Dockerfile language: text to typed instruction nodes.

``parse_dockerfile(text)`` returns a :class:`Dockerfile`; values in its nodes are raw (see
``builder.expand`` for variable expansion). Nothing here imports Lark until a file is parsed, and
the parser's own modules load on first use: a build whose plan comes from the plan memo, or
code that needs only the nodes or `builder.grammar.flags` (the solver's COPY), never loads them.
"""

from builder.grammar.nodes import (
    Add,
    Arg,
    ArgDecl,
    Cmd,
    Command,
    Copy,
    Dockerfile,
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

_PARSER_NAMES = ("dockerfile_to_json", "instruction_to_json", "parse_dockerfile")


def __getattr__(name: str):
    if name in _PARSER_NAMES:
        from builder.grammar import parser

        return getattr(parser, name)
    raise AttributeError(f"module 'builder.grammar' has no attribute {name!r}")

__all__ = [
    "Add",
    "Arg",
    "ArgDecl",
    "Cmd",
    "Command",
    "Copy",
    "Dockerfile",
    "Entrypoint",
    "Env",
    "ExecCommand",
    "Expose",
    "Flag",
    "From",
    "Healthcheck",
    "Heredoc",
    "Instruction",
    "Label",
    "Maintainer",
    "Onbuild",
    "Run",
    "Shell",
    "ShellCommand",
    "Stopsignal",
    "User",
    "Volume",
    "Workdir",
    "dockerfile_to_json",
    "instruction_to_json",
    "parse_dockerfile",
]
