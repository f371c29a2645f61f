"""Variable expansion: every ${} form, quotes and escapes, and which instruction fields expand."""

from __future__ import annotations

import pytest

from builder.errors import BuildError, ParseError
from builder.expand import ExpansionError, expand_instruction, expand_word, expand_words
from builder.grammar import (
    Arg,
    ArgDecl,
    Cmd,
    Copy,
    Env,
    Expose,
    From,
    Healthcheck,
    Label,
    Run,
    ShellCommand,
    parse_dockerfile,
)

ENV = {"NAME": "world", "EMPTY": "", "PATH": "/usr/local/bin:/usr/bin:/bin", "FILE": "archive.tar.gz", "SP": " a  b "}


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("hello $NAME", "hello world"),
        ("${NAME}s", "worlds"),
        ("$NAMEs", ""),  # the name runs on: $NAMEs is unset
        ("$UNSET/x", "/x"),
        ("${UNSET}", ""),
        ("$", "$"),
        ("a$.b", "a$.b"),
        ("$1x", "x"),  # positional parameters are never set
        # defaults and alternatives
        ("${UNSET:-dflt}", "dflt"),
        ("${EMPTY:-dflt}", "dflt"),
        ("${NAME:-dflt}", "world"),
        ("${UNSET-dflt}", "dflt"),
        ("${EMPTY-dflt}", ""),
        ("${NAME:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET+alt}", ""),
        ("${UNSET:-${NAME:-x}}", "world"),
        ("${NAME?}", "world"),
        ("${EMPTY?}", ""),
        # prefix and suffix removal with glob patterns
        ("${FILE#*.}", "tar.gz"),
        ("${FILE##*.}", "gz"),
        ("${FILE%.*}", "archive.tar"),
        ("${FILE%%.*}", "archive"),
        ("${PATH#/usr/}", "local/bin:/usr/bin:/bin"),
        ("${FILE#nomatch}", "archive.tar.gz"),
        ("${FILE%?z}", "archive.tar."),
        # replacement
        ("${PATH/bin/BIN}", "/usr/local/BIN:/usr/bin:/bin"),
        ("${PATH//bin/BIN}", "/usr/local/BIN:/usr/BIN:/BIN"),
        ("${PATH//:/ }", "/usr/local/bin /usr/bin /bin"),
        ("${FILE/*./X}", "Xgz"),
        ("${UNSET/a/b}", ""),
        # quotes
        ("'$NAME'", "$NAME"),
        ('"$NAME"', "world"),
        ('"a b"', "a b"),
        ("\"it's\"", "it's"),
        ("'say \"hi\"'", 'say "hi"'),
        ('"${SP}"', " a  b "),
        # escapes
        ("\\$NAME", "$NAME"),
        ("a\\ b", "a b"),
        ('"\\$NAME \\" \\\\ \\n"', '$NAME " \\ \\n'),
        ("'\\$NAME'", "\\$NAME"),
        ("C:\\\\go", "C:\\go"),
    ],
)
def test_expand_word(word, expected):
    assert expand_word(word, ENV) == expected


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("`$NAME", "$NAME"),
        ("C:\\go\\bin", "C:\\go\\bin"),  # backslashes are ordinary with the backtick escape
        ('"a`"b"', 'a"b'),
        ("$NAME`", "world"),
    ],
)
def test_expand_word_with_backtick_escape(word, expected):
    assert expand_word(word, ENV, escape="`") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a b  c", ["a", "b", "c"]),
        ("$SP", ["a", "b"]),  # unquoted values split
        ('"$SP"', [" a  b "]),  # quoted values do not
        ("x${SP}y", ["x", "a", "b", "y"]),
        ("'a b' c\\ d", ["a b", "c d"]),
        ('""', []),
        ("$UNSET", []),
        ("80/tcp $UNSET 443", ["80/tcp", "443"]),
    ],
)
def test_expand_words(text, expected):
    assert expand_words(text, ENV) == expected


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("${UNSET:?must be set}", "UNSET: must be set"),
        ("${UNSET?}", "UNSET: is not allowed to be unset"),
        ("${EMPTY:?}", "EMPTY: is not allowed to be empty"),
        ("${UNSET:?$NAME is needed}", "UNSET: world is needed"),
        ("${NAME", "syntax error: missing '}'"),
        ("${}", "syntax error: bad substitution"),
        ("${:-x}", "syntax error: bad substitution"),
        ("${NAME:=x}", "unsupported modifier (:=) in substitution"),
        ("${NAME:#x}", "unsupported modifier (:#) in substitution"),
        ('"open', "unexpected end of statement while looking for matching double-quote"),
        ("'open", "unexpected end of statement while looking for matching single-quote"),
        ("${NAME/x", "syntax error: missing '/' in ${}"),
    ],
)
def test_expansion_errors(word, message):
    with pytest.raises(ExpansionError) as info:
        expand_word(word, ENV)
    assert message in str(info.value)
    assert str(info.value).startswith("Dockerfile: failed to process ")
    assert isinstance(info.value, ParseError) and isinstance(info.value, BuildError)


def nodes(text: str):
    return parse_dockerfile(text).instructions


def test_env_and_label_expand_and_lose_quotes():
    env, label = nodes('FROM x\nENV A="x y" $K=${V:-d} C=\'$V\'\nLABEL "k"=\'v\' "$K"="$V"\n')[1:]
    expanded = expand_instruction(env, {"K": "key", "V": "val"})
    assert isinstance(expanded, Env)
    assert expanded.pairs == (("A", "x y"), ("key", "val"), ("C", "$V"))
    expanded_label = expand_instruction(label, {"K": "key", "V": "val"})
    assert isinstance(expanded_label, Label)
    assert expanded_label.pairs == (("k", "v"), ("key", "val"))
    assert env.pairs[0] == ("A", '"x y"')  # the original node is unchanged


def test_legacy_env_value_is_one_word():
    env = nodes("FROM x\nENV GOPATH C:\\\\go\n")[1]
    assert expand_instruction(env, {}).pairs == (("GOPATH", "C:\\go"),)


def test_from_expands_image_and_platform():
    node = nodes("ARG TAG\nFROM --platform=$TARGETPLATFORM img:${TAG:-latest} AS b\n")[1]
    expanded = expand_instruction(node, {"TARGETPLATFORM": "linux/arm64"})
    assert isinstance(expanded, From)
    assert (expanded.image, expanded.platform, expanded.stage_name) == ("img:latest", "linux/arm64", "b")
    assert expanded.flags[0].value == "linux/arm64"


def test_copy_expands_paths_flags_and_heredoc_bodies():
    copy = nodes(
        "FROM x\n"
        "COPY --from=$S --chown=$U:$U --chmod=$M src/$D \"$D\" <<EOF <<'RAW' /dst/$D/\n"
        "name=$D \"quoted\"\n"
        "EOF\n"
        "keep $D\n"
        "RAW\n"
    )[1]
    env = {"S": "builder", "U": "app", "M": "0755", "D": "dir"}
    expanded = expand_instruction(copy, env)
    assert isinstance(expanded, Copy)
    assert expanded.sources == ("src/dir", "dir")
    assert expanded.dest == "/dst/dir/"
    # --from stays as written: BuildKit does not expand it (the converter rejects a '$' there)
    assert (expanded.from_, expanded.chown, expanded.chmod) == ("$S", "app:app", "0755")
    body, raw = expanded.heredocs
    assert body.content == 'name=dir "quoted"\n'  # quotes are kept in heredoc bodies
    assert raw.content == "keep $D\n"


def test_add_expands_checksum():
    add = nodes("FROM x\nADD --checksum=$SUM https://example.com/$F /d\n")[1]
    expanded = expand_instruction(add, {"SUM": "sha256:00", "F": "a.tgz"})
    assert (expanded.checksum, expanded.sources) == ("sha256:00", ("https://example.com/a.tgz",))


def test_run_expands_mount_fields_and_network_but_not_the_command():
    run = nodes('FROM x\nRUN --mount=type=cache,target=$C,id="$ID" --network=$N echo $C\n')[1]
    expanded = expand_instruction(run, {"C": "/cache", "ID": "a b", "N": "none"})
    assert isinstance(expanded, Run)
    assert expanded.mounts == ("type=cache,target=/cache,id=a b",)
    assert expanded.network == "none"
    assert expanded.command == ShellCommand("echo $C")


def test_run_network_must_be_valid_after_expansion():
    run = nodes("FROM x\nRUN --network=$N true\n")[1]
    with pytest.raises(ExpansionError) as info:
        expand_instruction(run, {"N": "bridge"})
    assert str(info.value) == 'Dockerfile:2: invalid network mode "bridge"'


def test_mount_values_with_commas_stay_one_field():
    run = nodes('FROM x\nRUN --mount=type=bind,"source=$S" true\n')[1]
    expanded = expand_instruction(run, {"S": "a,b"})
    assert expanded.mounts == ('type=bind,"source=a,b"',)


def test_single_value_instructions_and_lists():
    df = nodes("FROM x\nWORKDIR $HOME/app\nUSER ${U}:${G}\nSTOPSIGNAL $SIG\nVOLUME $V /logs\nEXPOSE $PORTS 9000\nARG A=$HOME B\n")
    env = {"HOME": "/root", "U": "1000", "G": "1000", "SIG": "SIGINT", "V": "/data", "PORTS": "80 443/udp"}
    workdir, user, stop, volume, expose, arg = (expand_instruction(n, env) for n in df[1:])
    assert workdir.path == "/root/app"
    assert user.user == "1000:1000"
    assert stop.signal == "SIGINT"
    assert volume.paths == ("/data", "/logs")
    assert isinstance(expose, Expose) and expose.ports == ("80", "443/udp", "9000")
    assert isinstance(arg, Arg) and arg.args == (ArgDecl("A", "/root"), ArgDecl("B"))


def test_commands_are_left_to_the_shell():
    cmd, health = nodes("FROM x\nCMD echo $HOME\nHEALTHCHECK CMD test -f $F\n")[1:]
    assert expand_instruction(cmd, {"HOME": "/root"}) == cmd
    assert isinstance(cmd, Cmd)
    assert expand_instruction(health, {"F": "x"}) == health
    assert isinstance(health, Healthcheck)


def test_instruction_error_carries_file_and_line():
    workdir = nodes("FROM x\n\nWORKDIR ${DIR:?set DIR}\n")[1]
    with pytest.raises(ExpansionError) as info:
        expand_instruction(workdir, {}, filename="ctx/Dockerfile")
    assert info.value.line == 3
    assert str(info.value) == 'ctx/Dockerfile:3: failed to process "${DIR:?set DIR}": DIR: set DIR'


def test_backtick_escape_in_instructions():
    df = parse_dockerfile("# escape=`\nFROM x\nWORKDIR C:\\Users\\$U `$NOT\n")
    expanded = expand_instruction(df.instructions[1], {"U": "me"}, escape=df.escape)
    assert expanded.path == "C:\\Users\\me $NOT"
