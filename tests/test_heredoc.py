"""Heredocs in RUN, COPY and ADD: bodies, <<- tab stripping, quoted delimiters, several per line."""

from __future__ import annotations

import textwrap

from builder.grammar import Add, Copy, Heredoc, Onbuild, Run, ShellCommand, parse_dockerfile
from builder.grammar.heredoc import markers_in_line, parse_marker


def instructions(text: str):
    return parse_dockerfile(textwrap.dedent(text).lstrip("\n")).instructions


def test_run_heredoc_body_and_lines():
    _, run, after = instructions(
        """
        FROM scratch
        RUN <<EOF
        set -e
        echo "$HOME"   # not a Dockerfile comment
        EOF
        RUN true
        """
    )
    assert isinstance(run, Run)
    assert run.command == ShellCommand("<<EOF")
    assert run.heredocs == (Heredoc("EOF", 'set -e\necho "$HOME"   # not a Dockerfile comment\n', True, False),)
    assert (run.start_line, run.end_line) == (2, 5)
    assert run.original == "RUN <<EOF"
    assert after.start_line == 6


def test_heredoc_with_program_after_it():
    _, run = instructions(
        """
        FROM scratch
        RUN <<EOF python3
        print("hi")
        EOF
        """
    )
    assert run.command == ShellCommand("<<EOF python3")
    assert run.heredocs[0].content == 'print("hi")\n'


def test_dash_heredoc_strips_leading_tabs_of_body_and_terminator():
    text = "FROM scratch\nRUN <<-EOT\n\techo a\n\t\techo b\n  keep spaces\n\tEOT\nRUN true\n"
    _, run, after = parse_dockerfile(text).instructions
    heredoc = run.heredocs[0]
    assert heredoc.chomp
    assert heredoc.content == "\techo a\n\t\techo b\n  keep spaces\n"  # raw, as written
    assert heredoc.data == "echo a\necho b\n  keep spaces\n"
    assert after.start_line == 7


def test_without_dash_an_indented_terminator_does_not_end_the_body():
    text = "FROM scratch\nRUN <<EOT\n\tEOT\nEOT\n"
    run = parse_dockerfile(text).instructions[1]
    assert run.heredocs[0].content == "\tEOT\n"
    assert run.heredocs[0].data == "\tEOT\n"


def test_quoted_delimiters_turn_expansion_off():
    _, single, double, partial, plain = instructions(
        """
        FROM scratch
        RUN <<'EOF'
        $A
        EOF
        RUN <<"EOF"
        $A
        EOF
        RUN <<E"O"F
        $A
        EOF
        RUN << EOF
        $A
        EOF
        """
    )
    assert [r.heredocs[0].expand for r in (single, double, partial, plain)] == [False, False, False, True]
    assert all(r.heredocs[0].name == "EOF" for r in (single, double, partial, plain))


def test_several_heredocs_on_one_line_are_read_in_order():
    _, run = instructions(
        """
        FROM scratch
        RUN <<FILE1 cat > /a && <<FILE2 cat > /b
        one
        FILE1
        two
        FILE2
        """
    )
    assert [(h.name, h.content) for h in run.heredocs] == [("FILE1", "one\n"), ("FILE2", "two\n")]
    assert run.end_line == 6


def test_file_descriptor_prefix():
    _, run = instructions(
        """
        FROM scratch
        RUN cat 3<<EOF
        x
        EOF
        """
    )
    assert (run.heredocs[0].fd, run.heredocs[0].name) == (3, "EOF")


def test_copy_heredocs_become_inline_files():
    _, copy = instructions(
        """
        FROM scratch
        COPY --chmod=0644 <<one.txt <<-"two.txt" ./src /dest/
        first
        one.txt
        \tsecond $X
        \ttwo.txt
        """
    )
    assert isinstance(copy, Copy)
    assert copy.sources == ("./src",)
    assert copy.dest == "/dest/"
    first, second = copy.heredocs
    assert (first.name, first.content, first.expand) == ("one.txt", "first\n", True)
    assert (second.name, second.data, second.expand, second.chomp) == ("two.txt", "second $X\n", False, True)
    assert copy.chmod == "0644"


def test_add_heredoc():
    _, add = instructions(
        """
        FROM scratch
        ADD <<EOF /etc/motd
        hello
        EOF
        """
    )
    assert isinstance(add, Add)
    assert add.sources == () and add.heredocs[0].content == "hello\n"


def test_terminator_appearing_first_belongs_to_the_first_heredoc():
    # BuildKit reads heredocs in order: the body of X runs until a line "X", even if "Y" comes first.
    _, copy = instructions(
        """
        FROM scratch
        COPY <<X <<Y /dest
        Y
        X
        y body
        Y
        """
    )
    assert [(h.name, h.content) for h in copy.heredocs] == [("X", "Y\n"), ("Y", "y body\n")]


def test_heredoc_markers_that_are_not_heredocs():
    _, quoted, exec_form, herestring, shift, other = instructions(
        """
        FROM scratch
        RUN echo "<<EOF"
        RUN ["cat", "<<EOF"]
        RUN cat <<<"word"
        RUN echo $((1<<2))
        USER <<EOF
        """
    )
    assert all(n.heredocs == () for n in (quoted, exec_form, herestring, shift))
    assert other.user == "<<EOF"  # only RUN, COPY and ADD take heredocs


def test_onbuild_trigger_carries_the_heredoc():
    _, onbuild, after = instructions(
        """
        FROM scratch
        ONBUILD RUN <<EOF
        make
        EOF
        CMD ["x"]
        """
    )
    assert isinstance(onbuild, Onbuild)
    assert onbuild.trigger.heredocs == (Heredoc("EOF", "make\n"),)
    assert (onbuild.start_line, onbuild.end_line) == (2, 4)
    assert after.start_line == 5


def test_heredoc_after_continued_flags():
    _, run = instructions(
        """
        FROM scratch
        RUN --mount=type=cache,target=/c \\
            --network=none <<EOT
        go build
        EOT
        """
    )
    assert run.mounts == ("type=cache,target=/c",)
    assert run.heredocs[0].content == "go build\n"
    assert (run.start_line, run.end_line) == (2, 5)


def test_marker_parsing():
    assert parse_marker("<<EOF").name == "EOF"
    assert parse_marker("<<-'E F'") is not None and parse_marker("<<-'E F'").name == "E F"
    assert parse_marker("<<") is None
    assert parse_marker("<<<x") is None
    assert parse_marker("x<<EOF") is None
    assert [m.name for m in markers_in_line("RUN a <<A b << B 'c <<C'")] == ["A", "B"]
