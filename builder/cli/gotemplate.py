"""The part of Go's text/template that docker's `--format` flags are written in.

    {{.Config.Env}}  {{json .Config}}  {{.Id}}  {{range .RepoTags}}{{.}} {{end}}
    {{if .Config.Labels}}...{{else}}...{{end}}  {{range $k, $v := .Config.Labels}}{{$k}}={{$v}}{{end}}
    {{index .Config.Labels "maintainer"}}  {{.Size | printf "%d"}}  {{- trimmed -}}  {{/* comment */}}

Supported: text, actions with `{{-`/`-}}` trimming, comments; `.`, `$`, field chains on the dot,
on variables and on parenthesised pipelines; string, raw string, number, bool and nil literals;
pipelines with `|`; `:=` and `=`; {{if}}, {{else if}}, {{else}}, {{with}}, {{range}} (lists, maps
in key order, with one or two variables) and {{end}}. Functions: Go's and, or, not, eq, ne, lt,
le, gt, ge, len, index, print, printf, println; docker's json, join, split, lower, upper, title,
pad, truncate. Anything else (define, template, block, break, continue, other functions) is a
one-line TemplateError naming it, worded as Go words its errors.

Values are Python data: dict is a Go map (a missing key prints `<no value>`, json sorts its keys),
`Struct` a Go struct (fixed fields in order; an unknown field is an error unless it is lenient,
as docker inspect's fall-back to the raw JSON is), list a slice, None nil. `NIL_SLICE`, `NIL_MAP`
stand for Go's typed nils: they print `[]` and `map[]` but are `null` in JSON.
"""

from __future__ import annotations

import ast
import decimal
import json
import math
import re
from typing import Any, Callable, Mapping

from builder.errors import BuildError
from builder.plumbing.records import dataclass, field


class TemplateError(BuildError):
    """A template that does not parse, or fails while it runs (Go's wording)."""


@dataclass(frozen=True)
class Struct:
    """A Go struct value: FIELDS in declaration order, named TYPE_NAME in errors."""

    type_name: str
    fields: Mapping[str, Any]
    lenient: bool = False        # an unknown field is `<no value>` instead of an error


@dataclass(frozen=True)
class _TypedNil:
    printed: str


NIL_SLICE = _TypedNil("[]")
NIL_MAP = _TypedNil("map[]")


class _Missing:
    """A key a map does not have: Go's invalid value, printed `<no value>`."""

    def __repr__(self) -> str:
        return "<no value>"


MISSING = _Missing()


# --- lexing ------------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:\\.|[^"\\\n])*")
  | (?P<raw>`[^`]*`)
  | (?P<char>'(?:\\.|[^'\\])')
  | (?P<number>[+-]?(?:0[xX][0-9a-fA-F_]+|\d[\d_]*(?:\.\d+)?(?:[eE][+-]?\d+)?))
  | (?P<field>(?:\.[A-Za-z_]\w*)+)
  | (?P<dot>\.)
  | (?P<variable>\$\w*)
  | (?P<ident>[A-Za-z_]\w*)
  | (?P<declare>:=)
  | (?P<assign>=)
  | (?P<punct>[|(),])
""", re.VERBOSE)
_KEYWORDS = frozenset({"if", "else", "end", "range", "with", "define", "template", "block", "break", "continue"})
_UNSUPPORTED = frozenset({"define", "template", "block", "break", "continue"})


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    pos: int


@dataclass(frozen=True)
class _Item:
    kind: str                       # "text" or "action"
    pos: int
    text: str = ""
    tokens: tuple[_Token, ...] = ()


class _Source:
    def __init__(self, text: str):
        self.text = text

    def line(self, pos: int) -> int:
        return self.text.count("\n", 0, pos) + 1

    def where(self, pos: int) -> str:
        """Go's `:LINE:COL` of an execution error (the column counts from 0)."""
        return f":{self.line(pos)}:{pos - (self.text.rfind(chr(10), 0, pos) + 1)}"

    def parse_error(self, pos: int, message: str) -> TemplateError:
        return TemplateError(f"template: :{self.line(pos)}: {message}")


def _lex(source: _Source) -> list[_Item]:
    text = source.text
    items: list[_Item] = []
    pos = 0
    trim_next = False
    while True:
        start = text.find("{{", pos)
        chunk = text[pos:] if start < 0 else text[pos:start]
        left_trim = start >= 0 and _LEFT_TRIM.match(text, start) is not None
        if trim_next:
            chunk = chunk.lstrip(_SPACE)
        if left_trim:
            chunk = chunk.rstrip(_SPACE)
        if chunk:
            items.append(_Item("text", pos, text=chunk))
        if start < 0:
            return items
        tokens, pos, trim_next = _lex_action(source, start + (3 if left_trim else 2), start)
        if tokens is not None:
            items.append(_Item("action", start, tokens=tuple(tokens)))


_SPACE = " \t\r\n"
_LEFT_TRIM = re.compile(r"\{\{-\s")
_RIGHT_TRIM = re.compile(r"\s+-}}")
_COMMENT_START = re.compile(r"\s*/\*")
_COMMENT_END = re.compile(r"(\s+-)?}}")


def _lex_action(source: _Source, pos: int, start: int) -> tuple[list[_Token] | None, int, bool]:
    """The tokens of the action that starts at START (its first token at POS), or None for a
    comment; then the position after its `}}` and whether that was `-}}`."""
    text = source.text
    if _COMMENT_START.match(text, pos):
        end = text.find("*/", pos)
        close = _COMMENT_END.match(text, end + 2) if end >= 0 else None
        if end < 0:
            raise source.parse_error(start, "unclosed comment")
        if close is None:
            raise source.parse_error(start, "comment ends before closing delimiter")
        return None, close.end(), close.group(1) is not None
    tokens: list[_Token] = []
    while True:
        if pos >= len(text):
            raise source.parse_error(start, "unclosed action")
        trim = _RIGHT_TRIM.match(text, pos)
        if trim:
            return tokens, trim.end(), True
        if text.startswith("}}", pos):
            return tokens, pos + 2, False
        m = _TOKEN.match(text, pos)
        if not m:
            raise source.parse_error(pos, f"bad character {text[pos]!r} in action")
        if m.lastgroup != "space":
            tokens.append(_Token(m.lastgroup, m.group(), pos))
        pos = m.end()


# --- parsing -----------------------------------------------------------------------------------

@dataclass
class _Field:
    names: tuple[str, ...]
    pos: int
    text: str


@dataclass
class _Variable:
    name: str
    chain: tuple[str, ...]
    pos: int
    text: str


@dataclass
class _Literal:
    value: Any
    pos: int
    text: str


@dataclass
class _Function:
    name: str
    pos: int
    text: str


@dataclass
class _Pipe:
    pos: int
    text: str
    commands: list[list[Any]]                  # each command: its operands
    declare: tuple[str, ...] = ()
    assign: bool = False                       # `$x = ...` rather than `$x := ...`
    chain: tuple[str, ...] = ()                # `(pipeline).Field`


@dataclass
class _Text:
    text: str


@dataclass
class _Action:
    pipe: _Pipe


@dataclass
class _Control:
    keyword: str                               # if, with, range
    pipe: _Pipe
    body: list = field(default_factory=list)
    otherwise: list = field(default_factory=list)


class _Parser:
    def __init__(self, source: _Source, functions: Mapping[str, Callable]):
        self.source = source
        self.functions = functions
        self.items = _lex(source)
        self.i = 0
        self.scopes: list[set[str]] = [{"$"}]

    def parse(self) -> list:
        nodes, stop = self.parse_list()
        if stop is not None:
            raise self.source.parse_error(stop.pos, f"unexpected {{{{{stop.tokens[0].text}}}}}")
        return nodes

    def parse_list(self) -> tuple[list, _Item | None]:
        """Nodes up to an {{else}} or {{end}} (returned, not consumed further) or the end."""
        nodes: list = []
        while self.i < len(self.items):
            item = self.items[self.i]
            self.i += 1
            if item.kind == "text":
                nodes.append(_Text(item.text))
                continue
            if not item.tokens:
                raise self.source.parse_error(item.pos, "missing value for command")
            first = item.tokens[0]
            if first.kind == "ident" and first.text in ("else", "end"):
                return nodes, item
            if first.kind == "ident" and first.text in _UNSUPPORTED:
                raise self.source.parse_error(first.pos, f"{{{{{first.text}}}}} is not supported by build-image")
            if first.kind == "ident" and first.text in ("if", "with", "range"):
                nodes.append(self.parse_control(first, item.tokens[1:]))
                continue
            nodes.append(_Action(self.parse_pipe(list(item.tokens), allow_declare=True)))
        return nodes, None

    def parse_control(self, keyword: _Token, tokens) -> _Control:
        self.scopes.append(set())
        try:
            if not tokens:
                raise self.source.parse_error(keyword.pos, f"missing value for {keyword.text}")
            node = _Control(keyword.text, self.parse_pipe(list(tokens), allow_declare=True,
                                                         two_variables=keyword.text == "range"))
            node.body, stop = self.parse_list()
            if stop is None:
                raise self.source.parse_error(len(self.source.text), "unexpected EOF")
            rest = stop.tokens[1:]
            if stop.tokens[0].text == "else":
                if rest and rest[0].kind == "ident" and rest[0].text in ("if", "with"):
                    # {{else if X}} is {{else}}{{if X}}...{{end}} sharing the one {{end}}
                    node.otherwise = [self.parse_control(rest[0], rest[1:])]
                    return node
                if rest:
                    raise self.source.parse_error(rest[0].pos, f"unexpected {rest[0].text!r} in else")
                node.otherwise, stop = self.parse_list()
                if stop is None:
                    raise self.source.parse_error(len(self.source.text), "unexpected EOF")
                if stop.tokens[0].text != "end":
                    raise self.source.parse_error(stop.pos, "expected end; found {{else}}")
            elif rest:
                raise self.source.parse_error(rest[0].pos, f"unexpected {rest[0].text!r} in end")
            return node
        finally:
            self.scopes.pop()

    def parse_pipe(self, tokens: list[_Token], *, allow_declare: bool = False, two_variables: bool = False,
                   end: int | None = None) -> _Pipe:
        pos = tokens[0].pos if tokens else 0
        declare: tuple[str, ...] = ()
        assign = False
        if allow_declare and tokens and tokens[0].kind == "variable":
            if len(tokens) > 1 and tokens[1].kind in ("declare", "assign"):
                declare, assign, tokens = (tokens[0].text,), tokens[1].kind == "assign", tokens[2:]
            elif (two_variables and len(tokens) > 3 and tokens[1].text == "," and tokens[2].kind == "variable"
                  and tokens[3].kind == "declare"):
                declare, tokens = (tokens[0].text, tokens[2].text), tokens[4:]
        for name in declare:
            if assign and not any(name in s for s in self.scopes):
                raise self.source.parse_error(pos, f'undefined variable "{name}"')
            self.scopes[-1].add(name)
        commands: list[list[Any]] = [[]]
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if token.text == "|" and token.kind == "punct":
                if not commands[-1]:
                    raise self.source.parse_error(token.pos, "missing command")
                commands.append([])
                i += 1
                continue
            operand, i = self.parse_operand(tokens, i)
            commands[-1].append(operand)
        if not commands[-1]:
            raise self.source.parse_error(pos, "missing value for command")
        last = tokens[-1] if tokens else None
        text_end = end if end is not None else (last.pos + len(last.text) if last else pos)
        return _Pipe(pos, self.source.text[pos:text_end], commands, declare, assign)

    def parse_operand(self, tokens: list[_Token], i: int) -> tuple[Any, int]:
        token = tokens[i]
        kind, text, pos = token.kind, token.text, token.pos
        if kind == "field":
            return _Field(tuple(text[1:].split(".")), pos, text), i + 1
        if kind == "dot":
            return _Field((), pos, text), i + 1
        if kind == "variable":
            if not any(text in s for s in self.scopes):
                raise self.source.parse_error(pos, f'undefined variable "{text}"')
            chain: tuple[str, ...] = ()
            if i + 1 < len(tokens) and tokens[i + 1].kind == "field" and tokens[i + 1].pos == pos + len(text):
                chain = tuple(tokens[i + 1].text[1:].split("."))
                i += 1
            return _Variable(text, chain, pos, self.source.text[pos:tokens[i].pos + len(tokens[i].text)]), i + 1
        if kind in ("string", "raw", "char"):
            value = ast.literal_eval(text) if kind != "raw" else text[1:-1]
            return _Literal(ord(value) if kind == "char" else value, pos, text), i + 1
        if kind == "number":
            try:
                value = int(text.replace("_", ""), 0)
            except ValueError:
                value = float(text.replace("_", ""))
            return _Literal(value, pos, text), i + 1
        if kind == "ident":
            if text in ("true", "false"):
                return _Literal(text == "true", pos, text), i + 1
            if text == "nil":
                return _Literal(None, pos, text), i + 1
            if text in _KEYWORDS:
                raise self.source.parse_error(pos, f"unexpected <{text}> in command")
            if text not in self.functions:
                raise self.source.parse_error(pos, f'function "{text}" not defined')
            return _Function(text, pos, text), i + 1
        if text == "(":
            depth, j = 1, i + 1
            while j < len(tokens) and depth:
                depth += {"(": 1, ")": -1}.get(tokens[j].text if tokens[j].kind == "punct" else "", 0)
                j += 1
            if depth:
                raise self.source.parse_error(pos, "unclosed left paren")
            inner = tokens[i + 1:j - 1]
            if not inner:
                raise self.source.parse_error(pos, "missing value for parenthesized pipeline")
            pipe = self.parse_pipe(inner, end=tokens[j - 1].pos)
            pipe.pos, pipe.text = pos, self.source.text[pos:tokens[j - 1].pos + 1]
            if j < len(tokens) and tokens[j].kind == "field" and tokens[j].pos == tokens[j - 1].pos + 1:
                pipe.chain = tuple(tokens[j].text[1:].split("."))
                j += 1
            return pipe, j
        raise self.source.parse_error(pos, f"unexpected {text!r} in operand")


# --- values as Go prints, compares and encodes them ---------------------------------------------

def go_print(value: Any) -> str:
    """fmt's %v."""
    if value is MISSING:
        return "<no value>"
    if value is None:
        return "<nil>"
    if isinstance(value, _TypedNil):
        return value.printed
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, Struct):
        return "{" + " ".join(go_print(v) for v in value.fields.values()) + "}"
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{go_print(k)}:{go_print(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(go_print(v) for v in value) + "]"
    return str(value)


def _go_float(value: float) -> str:
    """strconv.FormatFloat(f, 'g', -1, 64), fmt's %v: the shortest digits that read back as VALUE,
    with an exponent (at least two digits) when it is below -4 or from 6 on: 1e+06, 123456, 1.5e-05."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    number = decimal.Decimal(repr(value)).normalize()
    sign, digits, exponent = number.as_tuple()
    point = len(digits) + exponent - 1            # the exponent in d.ddd e±XX form
    if -4 <= point < 6:
        return format(number, "f")
    mantissa = "".join(map(str, digits))
    mantissa = mantissa[0] + ("." + mantissa[1:] if len(mantissa) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{point:+03d}"


def to_json_value(value: Any) -> Any:
    """Plain JSON data as Go's encoding/json would write VALUE: maps by sorted key, structs in
    field order, typed nils as null."""
    if value is MISSING or isinstance(value, _TypedNil):
        return None
    if isinstance(value, Struct):
        return {k: to_json_value(v) for k, v in value.fields.items()}
    if isinstance(value, Mapping):
        return {str(k): to_json_value(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    return value


def go_json(value: Any) -> str:
    """docker's `json` template function: compact, no HTML escaping."""
    return json.dumps(to_json_value(value), ensure_ascii=False, separators=(",", ":"))


def truth(value: Any) -> bool:
    """Go's truth for if/and/or/not: false, 0, nil and empty strings, slices and maps are false."""
    if value is None or value is MISSING or isinstance(value, _TypedNil):
        return False
    if isinstance(value, Struct):
        return True
    if isinstance(value, (str, list, tuple, Mapping)):
        return len(value) > 0
    return bool(value)


def _type_name(value: Any) -> str:
    if isinstance(value, Struct):
        return value.type_name
    if value is None or value is MISSING:
        return "<nil>"
    return {bool: "bool", int: "int", float: "float64", str: "string", list: "[]interface {}",
            tuple: "[]interface {}", dict: "map[string]interface {}"}.get(type(value), type(value).__name__)


# --- functions ---------------------------------------------------------------------------------

class _Fail(Exception):
    """A function's error; the executor adds where it happened."""


def _want(value: Any, kind: type | tuple, what: str) -> Any:
    if isinstance(value, _TypedNil) and kind in (list, (list, tuple)):
        return []
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Fail(f"wrong type for value; expected {what}; got {_type_name(value)}")
    return value


def _index(container: Any, *keys: Any) -> Any:
    for key in keys:
        if container is NIL_MAP:
            return MISSING
        if isinstance(container, Mapping) and not isinstance(container, Struct):
            container = container.get(key, MISSING)
        elif isinstance(container, (list, tuple, str)) or container is NIL_SLICE:
            items = [] if container is NIL_SLICE else container
            if not isinstance(key, int) or isinstance(key, bool):
                raise _Fail(f"cannot index slice/array with type {_type_name(key)}")
            if not 0 <= key < len(items):
                raise _Fail(f"error calling index: index out of range: {key}")
            container = items[key]
        else:
            raise _Fail(f"error calling index: can't index item of type {_type_name(container)}")
    return container


def _length(value: Any) -> int:
    if isinstance(value, _TypedNil):
        return 0
    if isinstance(value, (str, list, tuple)) or (isinstance(value, Mapping) and not isinstance(value, Struct)):
        return len(value)
    raise _Fail(f"error calling len: len of type {_type_name(value)}")


def _compare(op: str) -> Callable:
    def compare(a: Any, b: Any) -> bool:
        if isinstance(a, bool) or isinstance(b, bool) or type(a) is not type(b) and not (
                isinstance(a, (int, float)) and isinstance(b, (int, float))):
            raise _Fail(f"error calling {op}: incompatible types for comparison")
        return {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[op]
    return compare


def _eq(a: Any, *others: Any) -> bool:
    if not others:
        raise _Fail("wrong number of args for eq: want at least 1 got 0")
    return any(a == b for b in others)


def _sprint(*args: Any) -> str:
    """fmt.Sprint: a space between operands when neither side is a string."""
    out = ""
    for i, arg in enumerate(args):
        if i and not isinstance(arg, str) and not isinstance(args[i - 1], str):
            out += " "
        out += go_print(arg)
    return out


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([vsdqtxXf%])")


def _sprintf(fmt: str, *args: Any) -> str:
    """fmt.Sprintf for the verbs people put in templates: %v %s %d %q %t %x %X %f and %%."""
    _want(fmt, str, "string")
    values = list(args)
    out: list[str] = []

    def verb(m: re.Match) -> str:
        flags, width, precision, kind = m.groups()
        if kind == "%":
            return "%"
        if not values:
            return f"%!{kind}(MISSING)"
        value = values.pop(0)
        if kind in "vst":
            text = go_print(value)
        elif kind == "q":
            text = json.dumps(go_print(value), ensure_ascii=False)
        elif kind in "dxX" and isinstance(value, int) and not isinstance(value, bool):
            text = format(value, {"d": "d", "x": "x", "X": "X"}[kind])
        elif kind == "f" and isinstance(value, (int, float)) and not isinstance(value, bool):
            text = f"{value:.{precision or 6}f}"
        else:
            return f"%!{kind}({_type_name(value)}={go_print(value)})"
        if kind == "s" and precision:
            text = text[:int(precision)]
        if width:
            fill = "0" if "0" in flags and kind in "dxXf" else " "
            text = text.ljust(int(width), " ") if "-" in flags else text.rjust(int(width), fill)
        return text

    out.append(_VERB.sub(verb, fmt))
    if values:
        out.append("%!(EXTRA " + ", ".join(f"{_type_name(v)}={go_print(v)}" for v in values) + ")")
    return "".join(out)


def _title(text: str) -> str:
    """strings.Title: the first letter of each word (after a space or punctuation) upper-cased."""
    return re.sub(r"(^|[^\w])(\w)", lambda m: m.group(1) + m.group(2).upper(), _want(text, str, "string"))


def _truncate(text: str, length: int) -> str:
    _want(text, str, "string")
    return text if len(text) < _want(length, int, "int") else text[:length]


FUNCTIONS: dict[str, Callable[..., Any] | None] = {
    # Go's builtins; and/or evaluate their arguments lazily, so the executor runs them itself
    "and": None, "or": None,
    "not": lambda value: not truth(value),
    "eq": _eq, "ne": lambda a, b: a != b,
    "lt": _compare("lt"), "le": _compare("le"), "gt": _compare("gt"), "ge": _compare("ge"),
    "len": _length, "index": _index,
    "print": _sprint, "println": lambda *args: " ".join(go_print(a) for a in args) + "\n", "printf": _sprintf,
    # docker's (cli/templates)
    "json": go_json,
    "join": lambda items, sep: _want(sep, str, "string").join(go_print(i) for i in _want(items, (list, tuple), "[]string")),
    "split": lambda text, sep: _want(text, str, "string").split(_want(sep, str, "string")) if sep else list(text),
    "lower": lambda text: _want(text, str, "string").lower(),
    "upper": lambda text: _want(text, str, "string").upper(),
    "title": _title,
    "pad": lambda text, before, after: " " * _want(before, int, "int") + _want(text, str, "string") + " " * _want(after, int, "int"),
    "truncate": _truncate,
}

# --- execution ---------------------------------------------------------------------------------

class Template:
    """A parsed template; `execute(data)` renders it."""

    def __init__(self, text: str):
        self.source = _Source(text)
        self.nodes = _Parser(self.source, FUNCTIONS).parse()

    def execute(self, data: Any, functions: Mapping[str, Callable] | None = None) -> str:
        run = _Execution(self.source, data, functions or FUNCTIONS)
        out: list[str] = []
        run.walk(self.nodes, data, out)
        return "".join(out)


def render(text: str, data: Any) -> str:
    return Template(text).execute(data)


class _Execution:
    def __init__(self, source: _Source, root: Any, functions: Mapping[str, Callable]):
        self.source = source
        self.functions = functions
        self.variables: list[dict[str, Any]] = [{"$": root}]

    def fail(self, node: Any, message: str) -> TemplateError:
        return TemplateError(f'template: {self.source.where(node.pos)}: executing "" at <{node.text}>: {message}')

    def walk(self, nodes: list, dot: Any, out: list[str]) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                out.append(node.text)
            elif isinstance(node, _Action):
                value = self.pipe(node.pipe, dot)
                if not node.pipe.declare:
                    out.append(go_print(value))
            else:
                self.control(node, dot, out)

    def control(self, node: _Control, dot: Any, out: list[str]) -> None:
        self.variables.append({})
        try:
            if node.keyword != "range":
                value = self.pipe(node.pipe, dot)
                if truth(value):
                    self.walk(node.body, value if node.keyword == "with" else dot, out)
                else:
                    self.walk(node.otherwise, dot, out)
                return
            value = self.pipe(node.pipe, dot, declare=False)
            if value is None or isinstance(value, _TypedNil):
                pairs: list[tuple[Any, Any]] = []
            elif isinstance(value, Struct) or not isinstance(value, (list, tuple, Mapping)):
                raise self.fail(node.pipe, f"range can't iterate over {go_print(value)}")
            elif isinstance(value, Mapping):
                pairs = [(k, value[k]) for k in sorted(value)]
            else:
                pairs = list(enumerate(value))
            for key, element in pairs:
                names = node.pipe.declare
                if len(names) == 1:
                    self.variables[-1][names[0]] = element
                elif len(names) == 2:
                    self.variables[-1][names[0]], self.variables[-1][names[1]] = key, element
                self.walk(node.body, element, out)
            if not pairs:
                self.walk(node.otherwise, dot, out)
        finally:
            self.variables.pop()

    def pipe(self, pipe: _Pipe, dot: Any, declare: bool = True) -> Any:
        value: Any = _NO_ARGUMENT
        for command in pipe.commands:
            value = self.command(command, dot, value)
        if pipe.chain:
            value = self.fields(value, pipe.chain, pipe)
        if declare and pipe.declare:
            if pipe.assign:
                for scope in reversed(self.variables):
                    if pipe.declare[0] in scope:
                        scope[pipe.declare[0]] = value
                        break
            else:
                self.variables[-1][pipe.declare[0]] = value
        return value

    def command(self, operands: list, dot: Any, piped: Any) -> Any:
        first = operands[0]
        if isinstance(first, _Function):
            if first.name in ("and", "or"):
                return self.logic(first, operands[1:], dot, piped)
            args = [self.operand(o, dot) for o in operands[1:]]
            if piped is not _NO_ARGUMENT:
                args.append(piped)
            function = self.functions[first.name]
            try:
                return function(*args)
            except _Fail as error:
                raise self.fail(first, str(error)) from None
            except TypeError:
                raise self.fail(first, f"wrong number of args for {first.name}: got {len(args)}") from None
        if len(operands) > 1 or piped is not _NO_ARGUMENT:
            raise self.fail(first, f"can't give argument to non-function {first.text}")
        return self.operand(first, dot)

    def logic(self, node: _Function, operands: list, dot: Any, piped: Any) -> Any:
        thunks = [lambda o=o: self.operand(o, dot) for o in operands]
        if piped is not _NO_ARGUMENT:
            thunks.append(lambda: piped)
        if not thunks:
            raise self.fail(node, f"wrong number of args for {node.name}: want at least 1 got 0")
        value = None
        for thunk in thunks:
            value = thunk()
            if truth(value) == (node.name == "or"):
                return value
        return value

    def operand(self, node: Any, dot: Any) -> Any:
        if isinstance(node, _Field):
            return self.fields(dot, node.names, node)
        if isinstance(node, _Variable):
            for scope in reversed(self.variables):
                if node.name in scope:
                    return self.fields(scope[node.name], node.chain, node)
            raise self.fail(node, f"undefined variable: {node.name}")
        if isinstance(node, _Literal):
            return node.value
        if isinstance(node, _Pipe):
            return self.pipe(node, dot)
        if isinstance(node, _Function):
            return self.command([node], dot, _NO_ARGUMENT)
        raise self.fail(node, "unexpected operand")

    def fields(self, value: Any, names: tuple[str, ...], node: Any) -> Any:
        for name in names:
            if isinstance(value, Struct):
                if name in value.fields:
                    value = value.fields[name]
                elif value.lenient:
                    value = MISSING
                else:
                    raise self.fail(node, f"can't evaluate field {name} in type {value.type_name}")
            elif isinstance(value, Mapping):
                value = value.get(name, MISSING)
            elif value is NIL_MAP:
                value = MISSING
            elif value is None or value is MISSING:
                raise self.fail(node, f"nil pointer evaluating interface {{}}.{name}")
            else:
                raise self.fail(node, f"can't evaluate field {name} in type {_type_name(value)}")
        return value


class _NoArgument:
    pass


_NO_ARGUMENT = _NoArgument()
