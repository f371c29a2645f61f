"""Every parse error: BuildKit's message, the right line, a ParseError and never a traceback."""

from __future__ import annotations

import pytest

from builder.errors import BuildError, ParseError
from builder.grammar import parse_dockerfile

CASES = [
    # (Dockerfile, line, message)
    ("FROM scratch\nRUN true\nFROBNICATE x\n", 3, "unknown instruction: FROBNICATE"),
    ("FROM scratch\nfoo bar\n", 2, "unknown instruction: foo (did you mean from?)"),
    ("FROM scratch\nRUNN make\n", 2, "unknown instruction: RUNN (did you mean RUN?)"),
    ("FROM scratch\ncopyy a b\n", 2, "unknown instruction: copyy (did you mean copy?)"),
    ("FROM a b\n", 1, "FROM requires either one or three arguments"),
    ("FROM\n", 1, "FROM requires either one or three arguments"),
    ("FROM a AS b c\n", 1, "FROM requires either one or three arguments"),
    ("FROM a AS 1st\n", 1, 'invalid name for build stage: "1st", name can\'t start with a number or contain symbols'),
    ("FROM scratch\nENV =x\n", 2, "ENV names can not be blank"),
    ("FROM scratch\nLABEL =x\n", 2, "LABEL names can not be blank"),
    ("FROM scratch\nARG =x\n", 2, "ARG names can not be blank"),
    ("FROM scratch\nENV\n", 2, "ENV requires at least one argument"),
    ("FROM scratch\nENV PATH\n", 2, "ENV must have two arguments"),
    ("FROM scratch\nENV A=1 B\n", 2, 'Syntax error - can\'t find = in "B". Must be of the form: name=value'),
    ("FROM scratch\nLABEL\n", 2, "LABEL requires at least one argument"),
    ("FROM scratch\nARG\n", 2, "ARG requires at least one argument"),
    ("FROM scratch\nRUN\n", 2, "RUN requires at least one argument"),
    ("FROM scratch\nRUN --mount=type=cache,target=/x\n", 2, "RUN requires at least one argument"),
    ("FROM scratch\nCMD\n", 2, "CMD requires at least one argument"),
    ("FROM scratch\nENTRYPOINT\n", 2, "ENTRYPOINT requires at least one argument"),
    ("FROM scratch\nEXPOSE\n", 2, "EXPOSE requires at least one argument"),
    ("FROM scratch\nVOLUME\n", 2, "VOLUME requires at least one argument"),
    ('FROM scratch\nVOLUME ["/a", " "]\n', 2, "VOLUME specified can not be an empty string"),
    ("FROM scratch\nHEALTHCHECK\n", 2, "HEALTHCHECK requires at least one argument"),
    ("FROM scratch\nHEALTHCHECK NONE x\n", 2, "HEALTHCHECK NONE takes no arguments"),
    ("FROM scratch\nHEALTHCHECK CMD\n", 2, "Missing command after HEALTHCHECK CMD"),
    ("FROM scratch\nHEALTHCHECK PING x\n", 2, 'Unknown type "PING" in HEALTHCHECK (try CMD)'),
    ("FROM scratch\nHEALTHCHECK --interval=5 CMD x\n", 2, 'time: missing unit in duration "5"'),
    ("FROM scratch\nHEALTHCHECK --interval=fast CMD x\n", 2, 'time: invalid duration "fast"'),
    ("FROM scratch\nHEALTHCHECK --timeout=10us CMD x\n", 2, 'Interval "timeout" cannot be less than 1ms'),
    ("FROM scratch\nHEALTHCHECK --retries=-1 CMD x\n", 2, "--retries cannot be negative (-1)"),
    ("FROM scratch\nHEALTHCHECK --interval=1s NONE\n", 2, "unknown flag: --interval"),
    ("FROM scratch\nUSER\n", 2, "USER requires exactly one argument"),
    ("FROM scratch\nWORKDIR\n", 2, "WORKDIR requires exactly one argument"),
    ("FROM scratch\nSTOPSIGNAL\n", 2, "STOPSIGNAL requires exactly one argument"),
    ("FROM scratch\nMAINTAINER\n", 2, "MAINTAINER requires exactly one argument"),
    ("FROM scratch\nCOPY a\n", 2, "COPY requires at least two arguments, but only one was provided. Destination could not be determined"),
    ("FROM scratch\nADD\n", 2, "ADD requires at least two arguments, but only one was provided. Destination could not be determined"),
    ("FROM scratch\nCOPY a <<EOF\nx\nEOF\n", 2, "COPY cannot accept a heredoc as a destination"),
    ("FROM scratch\nSHELL /bin/bash -c\n", 2, "SHELL requires the arguments to be in JSON form"),
    ("FROM scratch\nSHELL []\n", 2, "SHELL requires at least one argument"),
    ("FROM scratch\nCMD [\"a\", 1]\n", 2, "when using JSON array syntax, arrays must be comprised of strings only"),
    ("FROM scratch\nCOPY [\"a\", [\"b\"]]\n", 2, "when using JSON array syntax, arrays must be comprised of strings only"),
    ("FROM scratch\nONBUILD\n", 2, "ONBUILD requires at least one argument"),
    ("FROM scratch\nONBUILD ONBUILD RUN x\n", 2, "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
    ("FROM scratch\nONBUILD FROM alpine\n", 2, "FROM isn't allowed as an ONBUILD trigger"),
    ("FROM scratch\nONBUILD MAINTAINER me\n", 2, "MAINTAINER isn't allowed as an ONBUILD trigger"),
    # flags
    ("FROM scratch\nCOPY --foo a b\n", 2, "unknown flag: --foo (did you mean from?)"),
    ("FROM scratch\nCOPY --verbose a b\n", 2, "unknown flag: --verbose"),
    ("FROM scratch\nRUN --mont=type=cache,target=/x true\n", 2, "unknown flag: --mont (did you mean mount?)"),
    ("FROM scratch\nMAINTAINER --boo joe\n", 2, "unknown flag: --boo"),
    ("FROM scratch\nENV --x A=1\n", 2, "unknown flag: --x"),
    ("FROM scratch\nCOPY --from=a --from=b x y\n", 2, "duplicate flag specified: --from"),
    ("FROM scratch\nCOPY --from x y\n", 2, "missing a value on flag: --from"),
    ("FROM scratch\nCOPY --link= x y\n", 2, "missing a value on flag: --link"),
    ("FROM scratch\nCOPY --link=yes x y\n", 2, "expecting boolean value for flag --link, not: yes"),
    ("FROM scratch\nRUN --network=bridge true\n", 2, 'invalid network mode "bridge"'),
    ("FROM scratch\nRUN --security=wild true\n", 2, 'security "wild" is not valid'),
    ("FROM --platfrom=linux/arm64 alpine\n", 1, "unknown flag: --platfrom (did you mean platform?)"),
    # file structure
    ("", None, "file with no instructions"),
    ("# only a comment\n\n   \n", None, "file with no instructions"),
    ("RUN echo hi\n", 1, "no build stage in current context"),
    ("ARG A=1\n# c\nENV B=2\nFROM scratch\n", 3, "no build stage in current context"),
    ("# escape=`\n# escape=\\\nFROM scratch\n", 2, "only one escape parser directive can be used"),
    ("# escape=x\nFROM scratch\n", 1, "invalid escape token 'x' does not match ` or \\"),
    # heredocs
    ("FROM scratch\nRUN <<EOF\necho hi\n", 2, "unterminated heredoc"),
    ("FROM scratch\nCOPY <<A <<B /d\na\nA\nb\n", 2, "unterminated heredoc"),
    # line numbers count continuation lines and heredoc bodies
    ("FROM scratch\nRUN a \\\n  b\nRUN <<EOF\nx\nEOF\nBOGUSWORD\n", 7, "unknown instruction: BOGUSWORD"),
]


@pytest.mark.parametrize(("text", "line", "message"), CASES, ids=[c[2][:50] + f"@{c[1]}" for c in CASES])
def test_parse_error(text, line, message):
    with pytest.raises(ParseError) as info:
        parse_dockerfile(text)
    err = info.value
    assert err.message == message
    assert err.line == line
    assert err.filename == "Dockerfile"
    assert str(err) == (f"Dockerfile:{line}: {message}" if line is not None else f"Dockerfile: {message}")


def test_error_names_the_file():
    with pytest.raises(ParseError) as info:
        parse_dockerfile("FROM scratch\nBOGUS\n", filename="app/Dockerfile.dev")
    assert str(info.value) == "app/Dockerfile.dev:2: unknown instruction: BOGUS"


@pytest.mark.parametrize(
    "text",
    [
        "FROM scratch\nRUN \x00\x01\x02\n",
        "FROM scratch\nENV \"unterminated\n",
        "FROM scratch\nLABEL a='b\n",
        "FROM scratch\nCOPY --chown=\"x a b\n",
        "FROM scratch\nRUN [\"\\ud800\"]\n",
        "FROM scratch\nONBUILD --\n",
        "FROM scratch\nHEALTHCHECK --retries=abc CMD x\n",
        "FROM scratch\nHEALTHCHECK --interval=1x CMD x\n",
        "\\\n\\\n",
        "FROM scratch\n" + "RUN " + "[" * 500 + "\n",
    ],
)
def test_odd_input_never_escapes_as_a_foreign_exception(text):
    try:
        parse_dockerfile(text)
    except BuildError as err:
        assert isinstance(err, ParseError)
        assert str(err).startswith("Dockerfile")
