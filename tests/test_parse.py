"""Parsing Dockerfiles into typed nodes: every instruction, directives, continuations, flags."""

from __future__ import annotations

import json
import textwrap

import pytest

from builder.grammar import (
    Add,
    Arg,
    ArgDecl,
    Cmd,
    Copy,
    Entrypoint,
    Env,
    ExecCommand,
    Expose,
    Flag,
    From,
    Healthcheck,
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
    dockerfile_to_json,
    parse_dockerfile,
)


def parse(text: str):
    return parse_dockerfile(textwrap.dedent(text).lstrip("\n"))


def only(text: str):
    """The single instruction after a leading FROM."""
    df = parse("FROM scratch\n" + textwrap.dedent(text).lstrip("\n"))
    assert len(df.instructions) == 2
    return df.instructions[1]


# -- FROM -------------------------------------------------------------------------------------


def test_from_image_only():
    node = parse("FROM alpine:3.19").instructions[0]
    assert isinstance(node, From)
    assert (node.image, node.stage_name, node.platform) == ("alpine:3.19", None, None)
    assert (node.keyword, node.original, node.start_line, node.end_line) == ("FROM", "FROM alpine:3.19", 1, 1)


def test_from_stage_name_is_lowercased_and_as_is_case_insensitive():
    node = parse("from --platform=$BUILDPLATFORM golang:1.22 as Builder").instructions[0]
    assert node.image == "golang:1.22"
    assert node.stage_name == "builder"
    assert node.platform == "$BUILDPLATFORM"
    assert node.flags == (Flag("platform", "$BUILDPLATFORM"),)


# -- RUN, CMD, ENTRYPOINT, SHELL ---------------------------------------------------------------


def test_run_shell_form_keeps_text_raw():
    node = only('RUN echo "$HOME" && ls -l')
    assert isinstance(node, Run)
    assert node.command == ShellCommand('echo "$HOME" && ls -l')
    assert node.heredocs == () and node.mounts == () and node.network is None


def test_run_exec_form():
    node = only('RUN ["/bin/sh", "-c", "echo hi"]')
    assert node.command == ExecCommand(("/bin/sh", "-c", "echo hi"))


def test_run_flags():
    node = only(
        "RUN --mount=type=cache,target=/root/.cache --mount=type=secret,id=tok "
        "--network=none --security=insecure --device=/dev/fuse make"
    )
    assert node.mounts == ("type=cache,target=/root/.cache", "type=secret,id=tok")
    assert (node.network, node.security, node.devices) == ("none", "insecure", ("/dev/fuse",))
    assert node.command == ShellCommand("make")
    assert [f.name for f in node.flags] == ["mount", "mount", "network", "security", "device"]


def test_flag_values_lose_their_quotes():
    node = only('RUN --mount="type=bind,target=/a b" true')
    assert node.mounts == ("type=bind,target=/a b",)
    assert node.command == ShellCommand("true")


def test_double_dash_ends_flags():
    node = only("RUN -- --version")
    assert node.flags == ()
    assert node.command == ShellCommand("--version")


@pytest.mark.parametrize(
    "line",
    [
        'CMD ["a", "b"',  # unterminated bracket
        "CMD ['a', 'b']",  # single quotes are not JSON
        'CMD ["a" "b"]',  # missing comma
        'CMD [ "a\\q" ]',  # invalid escape
    ],
)
def test_invalid_json_falls_back_to_shell_form(line):
    node = only(line)
    assert isinstance(node, Cmd)
    assert node.command == ShellCommand(line[len("CMD "):])


def test_json_with_escapes_and_unicode():
    node = only(r'ENTRYPOINT ["echo", "a\"b", "\u2603", "tab\there"]')
    assert isinstance(node, Entrypoint)
    assert node.command == ExecCommand(("echo", 'a"b', "\u2603", "tab\there"))


def test_empty_exec_form_is_allowed_for_cmd():
    assert only("CMD []").command == ExecCommand(())


def test_shell_instruction():
    node = only('SHELL ["powershell", "-Command"]')
    assert isinstance(node, Shell)
    assert node.args == ("powershell", "-Command")


# -- COPY, ADD --------------------------------------------------------------------------------


def test_copy_fields():
    node = only("COPY --from=build --chown=app:app --chmod=0755 --link --parents --exclude=*.md a b /dst/")
    assert isinstance(node, Copy)
    assert node.sources == ("a", "b")
    assert node.dest == "/dst/"
    assert (node.from_, node.chown, node.chmod) == ("build", "app:app", "0755")
    assert node.link and node.parents
    assert node.exclude == ("*.md",)


def test_copy_exec_form_and_defaults():
    node = only('COPY ["my file", "/dst dir/"]')
    assert node.sources == ("my file",)
    assert node.dest == "/dst dir/"
    assert (node.from_, node.chown, node.chmod, node.link, node.parents) == (None, None, None, False, False)


def test_copy_shell_form_splits_on_whitespace_only():
    # BuildKit splits COPY arguments on whitespace; quotes are removed later, word by word.
    node = only('COPY "a b" /dst')
    assert node.sources == ('"a', 'b"')


def test_add_fields():
    node = only(
        "ADD --checksum=sha256:abc --keep-git-dir=true --unpack=false --chown=1 --exclude=x --exclude=y "
        "https://example.com/a.tar.gz /opt/"
    )
    assert isinstance(node, Add)
    assert node.sources == ("https://example.com/a.tar.gz",)
    assert node.dest == "/opt/"
    assert (node.checksum, node.keep_git_dir, node.unpack, node.chown) == ("sha256:abc", True, False, "1")
    assert node.exclude == ("x", "y")


def test_add_boolean_flags_not_given_are_none():
    node = only("ADD a /b")
    assert node.keep_git_dir is None and node.unpack is None and node.link is False


# -- ENV, LABEL, ARG --------------------------------------------------------------------------


def test_env_keeps_quotes_raw():
    node = only('ENV A="x y" B=plain C=\'single q\' D=a\\ b')
    assert isinstance(node, Env)
    assert node.pairs == (("A", '"x y"'), ("B", "plain"), ("C", "'single q'"), ("D", "a\\ b"))


def test_env_legacy_form_takes_the_rest_of_the_line():
    node = only("ENV PATH /usr/local/bin:$PATH   and more")
    assert node.pairs == (("PATH", "/usr/local/bin:$PATH   and more"),)


def test_env_empty_value():
    assert only("ENV A= B=1").pairs == (("A", ""), ("B", "1"))


def test_label_pairs():
    node = only('LABEL "com.example.vendor"="ACME" version=1.0 description="a b"')
    assert isinstance(node, Label)
    assert node.pairs == (('"com.example.vendor"', '"ACME"'), ("version", "1.0"), ("description", '"a b"'))


def test_arg_declarations():
    node = only('ARG A B=1 C="x y" D=')
    assert isinstance(node, Arg)
    assert node.args == (ArgDecl("A"), ArgDecl("B", "1"), ArgDecl("C", '"x y"'), ArgDecl("D", ""))


def test_global_args_before_from():
    df = parse(
        """
        ARG BASE=alpine
        ARG TAG
        FROM ${BASE}:${TAG}
        """
    )
    assert [type(n) for n in df.instructions] == [Arg, Arg, From]
    assert df.instructions[2].image == "${BASE}:${TAG}"


# -- the single-value instructions ------------------------------------------------------------


def test_single_value_instructions_take_the_whole_rest():
    df = parse(
        """
        FROM scratch
        MAINTAINER Jane Doe <jane@example.com>
        USER app:app
        WORKDIR /my dir
        STOPSIGNAL SIGTERM
        EXPOSE 80/tcp 443 $PORT
        VOLUME /data /logs
        VOLUME ["/cache"]
        """
    )
    _, maintainer, user, workdir, stopsignal, expose, volume, volume_json = df.instructions
    assert isinstance(maintainer, Maintainer) and maintainer.name == "Jane Doe <jane@example.com>"
    assert isinstance(user, User) and user.user == "app:app"
    assert isinstance(workdir, Workdir) and workdir.path == "/my dir"
    assert isinstance(stopsignal, Stopsignal) and stopsignal.signal == "SIGTERM"
    assert isinstance(expose, Expose) and expose.ports == ("80/tcp", "443", "$PORT")
    assert isinstance(volume, Volume) and volume.paths == ("/data", "/logs")
    assert volume_json.paths == ("/cache",)


# -- HEALTHCHECK, ONBUILD ---------------------------------------------------------------------


def test_healthcheck_cmd_with_options():
    node = only(
        "HEALTHCHECK --interval=30s --timeout=1m30s --start-period=1.5s --start-interval=500ms --retries=3 "
        "CMD curl -f http://localhost/"
    )
    assert isinstance(node, Healthcheck)
    assert node.command == ShellCommand("curl -f http://localhost/")
    assert node.interval == 30 * 10**9
    assert node.timeout == 90 * 10**9
    assert node.start_period == 1_500_000_000
    assert node.start_interval == 500_000_000
    assert node.retries == 3


def test_healthcheck_exec_form_and_none():
    node = only('HEALTHCHECK CMD ["/bin/check", "--quiet"]')
    assert node.command == ExecCommand(("/bin/check", "--quiet"))
    assert (node.interval, node.retries) == (0, 0)
    none = only("healthcheck none")
    assert none.command is None


def test_onbuild_wraps_a_typed_trigger():
    node = only("ONBUILD RUN --mount=type=cache,target=/c make install")
    assert isinstance(node, Onbuild)
    trigger = node.trigger
    assert isinstance(trigger, Run)
    assert trigger.mounts == ("type=cache,target=/c",)
    assert trigger.original == "RUN --mount=type=cache,target=/c make install"
    assert node.original == "ONBUILD RUN --mount=type=cache,target=/c make install"


# -- keywords, directives, comments, continuations -------------------------------------------


def test_keywords_are_case_insensitive():
    df = parse("from scratch\nRun echo\ncOpY a b\n")
    assert [n.keyword for n in df.instructions] == ["FROM", "RUN", "COPY"]


def test_directives_are_read_until_the_first_other_line():
    df = parse(
        """
        # syntax=docker/dockerfile:1.7
        # CHECK = skip=all
        #escape=`
        # this comment ends the directives: # escape=\\ is not one
        # syntax=ignored
        FROM scratch
        """
    )
    assert df.directives == (("syntax", "docker/dockerfile:1.7"), ("check", "skip=all"), ("escape", "`"))
    assert df.escape == "`"
    assert df.directive("syntax") == "docker/dockerfile:1.7"
    assert df.directive("missing") is None


def test_a_comment_ends_the_directives():
    df = parse("# hello\n# escape=`\nFROM scratch\n")
    assert df.directives == ()
    assert df.escape == "\\"


def test_a_blank_line_ends_the_directives():
    df = parse_dockerfile("\n# escape=`\nFROM scratch\n")
    assert df.escape == "\\"


def test_backtick_escape_continues_lines_and_keeps_backslashes():
    df = parse(
        """
        # escape=`
        FROM mcr.microsoft.com/windows/servercore
        RUN powershell -Command `
            Write-Host C:\\Program Files\\
        COPY --chown=a` b C:\\src C:\\dst\\
        """
    )
    run, copy = df.instructions[1:]
    assert run.command == ShellCommand("powershell -Command     Write-Host C:\\Program Files\\")
    assert (run.start_line, run.end_line) == (3, 4)
    assert copy.chown == "a b"  # the backtick escapes the space inside the flag
    assert copy.sources == ("C:\\src",)
    assert copy.dest == "C:\\dst\\"


def test_continuations_comments_and_empty_lines():
    df = parse(
        """
        FROM scratch
        RUN apt-get update \\
        # a comment inside the continuation is dropped
            && apt-get install -y \\

              curl
        CMD ["sh"]
        """
    )
    run, cmd = df.instructions[1:]
    assert run.command == ShellCommand("apt-get update     && apt-get install -y       curl")
    assert run.original == "RUN apt-get update     && apt-get install -y       curl"
    assert (run.start_line, run.end_line) == (2, 6)
    assert (cmd.start_line, cmd.end_line) == (7, 7)


def test_escaped_escape_does_not_continue():
    df = parse("FROM scratch\nRUN echo a\\\\\nRUN echo b\n")
    assert [n.command.text for n in df.instructions[1:]] == ["echo a\\\\", "echo b"]


def test_continuation_at_end_of_file():
    df = parse("FROM scratch\nRUN echo a \\")
    assert df.instructions[1].command == ShellCommand("echo a")
    assert df.instructions[1].end_line == 2


def test_byte_order_mark_and_crlf():
    df = parse_dockerfile("\ufeffFROM scratch\r\nRUN echo a \\\r\n  b\r\n")
    assert df.instructions[1].command == ShellCommand("echo a   b")
    assert df.instructions[1].end_line == 3


def test_leading_whitespace_and_blank_lines():
    df = parse_dockerfile("\n\n   FROM scratch\n\t\n  RUN true   \n")
    assert [(n.keyword, n.start_line) for n in df.instructions] == [("FROM", 3), ("RUN", 5)]
    assert df.instructions[1].original == "RUN true"


# -- JSON view --------------------------------------------------------------------------------


def test_dockerfile_to_json():
    df = parse(
        """
        FROM alpine AS base
        RUN --network=none ["echo", "hi"]
        ENV A=1 B="2"
        ONBUILD COPY a b
        """
    )
    data = dockerfile_to_json(df)
    json.dumps(data)  # plain data only
    assert data[0] == {
        "instruction": "FROM",
        "flags": [],
        "arguments": ["alpine", "AS", "base"],
        "original": "FROM alpine AS base",
        "start_line": 1,
        "end_line": 1,
    }
    assert data[1]["flags"] == [{"name": "network", "value": "none"}]
    assert data[1]["arguments"] == ["echo", "hi"] and data[1]["exec_form"] is True
    assert data[2]["arguments"] == ["A=1", 'B="2"']
    assert data[3]["trigger"]["instruction"] == "COPY"


def test_nodes_are_frozen():
    node = parse("FROM scratch").instructions[0]
    with pytest.raises(Exception):
        node.image = "other"  # type: ignore[misc]
