"""Dockerfile text to a :class:`Dockerfile` of typed instructions.

Two passes, like BuildKit's ``parser`` and ``instructions`` packages: first every logical line is
read (directives, continuations, the Lark parse of the line, heredoc bodies), then each parse tree
becomes a typed node and the stage structure is checked. Every failure is a
:class:`builder.errors.ParseError` naming the file and line.
"""

from __future__ import annotations

from builder.errors import ParseError
from builder.grammar.heredoc import markers_in_line
from builder.grammar.instructions import InstructionBuilder, InstructionError, Source, heredoc_keyword
from builder.grammar.lines import LineReader
from builder.grammar.nodes import (
    Add,
    Arg,
    Cmd,
    Copy,
    Dockerfile,
    Entrypoint,
    Env,
    ExecCommand,
    Expose,
    From,
    Healthcheck,
    Heredoc,
    Instruction,
    Label,
    Maintainer,
    Onbuild,
    Run,
    Shell,
    Stopsignal,
    User,
    Volume,
    Workdir,
)
from builder.grammar.syntax import LineSyntaxError, parse_line


def parse_dockerfile(text: str, filename: str = "Dockerfile") -> Dockerfile:
    """Parse a whole Dockerfile; raises ParseError with BuildKit's messages."""
    reader = LineReader(text, filename)
    parsed = []
    while (line := reader.next_line()) is not None:
        stripped = line.text.strip()
        if not stripped:
            continue
        try:
            tree = parse_line(stripped, reader.escape)
        except LineSyntaxError as err:
            raise ParseError(str(err), filename=filename, line=line.start_line) from None
        heredocs: list[Heredoc] = []
        if heredoc_keyword(tree) is not None:
            for marker in markers_in_line(line.text):
                body = reader.read_heredoc(marker.name, marker.chomp, line.start_line)
                heredocs.append(Heredoc(marker.name, body, marker.expand, marker.chomp, marker.fd))
        parsed.append((tree, Source(line.text, line.start_line, reader.line_number, tuple(heredocs))))

    if not parsed:
        raise ParseError("file with no instructions", filename=filename)

    builder = InstructionBuilder(reader.escape)
    instructions: list[Instruction] = []
    in_stage = False
    for tree, source in parsed:
        try:
            node = builder.build(tree, source)
        except InstructionError as err:
            raise ParseError(str(err), filename=filename, line=source.start_line) from None
        if isinstance(node, From):
            in_stage = True
        elif not in_stage and not isinstance(node, Arg):
            # Only ARGs (the global build args) may come before the first FROM.
            raise ParseError("no build stage in current context", filename=filename, line=source.start_line)
        instructions.append(node)
    return Dockerfile(filename, tuple(reader.directives), reader.escape, tuple(instructions))


# -- a JSON view for ``build-image parse`` ---------------------------------------------------


def _command_args(command) -> list[str]:
    if command is None:
        return []
    return list(command.args) if isinstance(command, ExecCommand) else [command.text]


def _arguments(node: Instruction) -> list[str]:
    """The instruction's arguments as strings, roughly BuildKit's AST view of them."""
    match node:
        case From():
            return [node.image] + (["AS", node.stage_name] if node.stage_name else [])
        case Run() | Cmd() | Entrypoint():
            return _command_args(node.command)
        case Healthcheck():
            return ["NONE"] if node.command is None else ["CMD", *_command_args(node.command)]
        case Shell():
            return list(node.args)
        case Copy() | Add():
            return [*node.sources, *(f"<<{h.name}" for h in node.heredocs), node.dest]
        case Env() | Label():
            return [f"{key}={value}" for key, value in node.pairs]
        case Arg():
            return [a.name if a.default is None else f"{a.name}={a.default}" for a in node.args]
        case Expose():
            return list(node.ports)
        case Volume():
            return list(node.paths)
        case User():
            return [node.user]
        case Workdir():
            return [node.path]
        case Stopsignal():
            return [node.signal]
        case Maintainer():
            return [node.name]
        case Onbuild():
            return [node.trigger.original]
    return []


def instruction_to_json(node: Instruction) -> dict:
    """One instruction as plain JSON-able data."""
    out: dict = {
        "instruction": node.keyword,
        "flags": [{"name": f.name, "value": f.value} for f in node.flags],
        "arguments": _arguments(node),
        "original": node.original,
        "start_line": node.start_line,
        "end_line": node.end_line,
    }
    command = getattr(node, "command", None)
    if command is not None:
        out["exec_form"] = isinstance(command, ExecCommand)
    heredocs = getattr(node, "heredocs", ())
    if heredocs:
        out["heredocs"] = [
            {"name": h.name, "content": h.content, "expand": h.expand, "chomp": h.chomp} for h in heredocs
        ]
    if isinstance(node, Onbuild):
        out["trigger"] = instruction_to_json(node.trigger)
    return out


def dockerfile_to_json(df: Dockerfile) -> list[dict]:
    """Every instruction of ``df`` as a dict: instruction, flags, arguments, original, lines."""
    return [instruction_to_json(node) for node in df.instructions]
