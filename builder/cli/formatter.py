"""docker's `--format` for lists (images, history): presets, `table`, headers and column alignment.

    table                      the command's default table
    table TEMPLATE             TEMPLATE per row under a header row, aligned by Go's tabwriter
    json                       one JSON object per row (`{{json .}}`)
    TEMPLATE                   TEMPLATE per row, nothing aligned

As docker's formatter does: spaces around the format are trimmed, a literal `\\t` or `\\n` becomes a
tab or a newline, the header is the same template run over the column names (with docker's
functions passing their first argument through), and cells are split on tabs and aligned with
minimum width 10 and padding 3.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .gotemplate import FUNCTIONS, Template, TemplateError


def _header_text(text: Any = "", *ignored: Any) -> Any:
    return text


# The header row is the row template run over the column names, with docker's own functions
# passing the name through (so `{{.Tag | upper}}` heads its column with TAG, `{{json .ID}}` with IMAGE ID).
_HEADER_FUNCTIONS = {**FUNCTIONS, **{name: _header_text for name in
                                     ("json", "split", "join", "title", "lower", "upper", "pad", "truncate")}}


def is_table(format_: str) -> bool:
    return format_.startswith("table")


def format_rows(format_: str, rows: Sequence[Any], headers: Mapping[str, str], default_table: str) -> str:
    """ROWS rendered as docker renders FORMAT; each row's output ends with a newline."""
    if format_ == "table":
        format_ = default_table
    elif format_ == "json":
        format_ = "{{json .}}"
    table = is_table(format_)
    text = format_[len("table"):] if table else format_
    text = text.strip(" ").replace("\\t", "\t").replace("\\n", "\n")
    template = parse(text)
    try:
        body = "".join(template.execute(row) + "\n" for row in rows)
        if not table:
            return body
        header = template.execute(dict(headers), _HEADER_FUNCTIONS)
    except TemplateError as error:
        raise TemplateError(f"template parsing error: {error}") from None
    return tabwrite(header + "\n" + body)


def parse(text: str) -> Template:
    try:
        return Template(text)
    except TemplateError as error:
        raise TemplateError(f"template parsing error: {error}") from None


def tabwrite(text: str, min_width: int = 10, padding: int = 3) -> str:
    """Go's text/tabwriter (padchar ' ', no flags): a cell is text ended by a tab; in each run of
    consecutive lines that have a cell in column i, that column is as wide as its widest cell plus
    PADDING (at least MIN_WIDTH). A line's last, unterminated cell is written as is."""
    lines = [line.split("\t") for line in text.split("\n")]
    out: list[str] = []
    widths: list[int] = []

    def write(first: int, last: int) -> None:
        for line in lines[first:last]:
            cells = [cell.ljust(widths[j]) if j < len(widths) and j < len(line) - 1 else cell
                     for j, cell in enumerate(line)]
            out.append("".join(cells))

    def block(first: int, last: int) -> int:
        """Lay out lines FIRST..LAST for column len(widths); returns where the caller resumes."""
        column = len(widths)
        this = first
        while this < last:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            write(first, this)
            start = this
            width = min_width
            while this < last and column < len(lines[this]) - 1:
                width = max(width, len(lines[this][column]) + padding)
                this += 1
            widths.append(width)
            block(start, this)
            widths.pop()
            first = this
        write(first, last)
        return last

    block(0, len(lines))
    return "\n".join(out)
