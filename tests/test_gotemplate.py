"""The Go text/template subset behind `--format`, docker's formatter (table, json, headers) and
Go's tabwriter. Expected outputs are what Go and docker print for the same template and data."""

from __future__ import annotations

import pytest

from builder.cli.formatter import format_rows, tabwrite
from builder.cli.gotemplate import NIL_MAP, NIL_SLICE, Struct, TemplateError, render

CONFIG = Struct("*container.Config", {
    "Env": ["PATH=/bin", "A=1"],
    "Cmd": NIL_SLICE,
    "Entrypoint": ["/app", "--serve"],
    "Labels": {"version": "2", "maintainer": "me"},
    "Volumes": NIL_MAP,
    "ExposedPorts": {"8080/tcp": Struct("struct {}", {})},
    "WorkingDir": "",
}, lenient=True)
IMAGE = Struct("image", {
    "Id": "sha256:3f5a",
    "RepoTags": ["app:1", "app:latest"],
    "RepoDigests": NIL_SLICE,
    "Size": 1234567,
    "Floats": [1e6, 123456.0, 1234567.0, 1.5e-5, 0.0001, -2.25, 0.0],
    "Config": CONFIG,
    "RootFS": Struct("rootfs", {"Type": "layers", "Layers": ["sha256:aa", "sha256:bb"]}, lenient=True),
}, lenient=True)


@pytest.mark.parametrize("template, expected", [
    # fields and printing as fmt's %v does
    ("{{.Id}}", "sha256:3f5a"),
    ("{{.Config.Env}}", "[PATH=/bin A=1]"),
    ("{{.Config.Cmd}} {{.Config.Volumes}}", "[] map[]"),                 # typed nils
    ("{{.Config.Labels}}", "map[maintainer:me version:2]"),              # sorted keys
    ("{{.Config.ExposedPorts}}", "map[8080/tcp:{}]"),
    ("{{.Size}}", "1234567"),
    ("{{.Floats}}", "[1e+06 123456 1.234567e+06 1.5e-05 0.0001 -2.25 0]"),  # JSON numbers read as float64
    ("{{.RootFS}}", "{layers [sha256:aa sha256:bb]}"),
    ("{{.Config.Labels.version}} {{.Config.Labels.nope}}", "2 <no value>"),
    ("{{.NotAField}}", "<no value>"),                                     # inspect's raw-JSON fallback
    ("id={{.Id}}\n", "id=sha256:3f5a\n"),
    # json (docker's: compact, maps sorted, structs in field order, nils null)
    ("{{json .Config.Env}}", '["PATH=/bin","A=1"]'),
    ("{{json .Config.Cmd}} {{json .Config.Volumes}}", "null null"),
    ("{{json .Config.Labels}}", '{"maintainer":"me","version":"2"}'),
    ("{{json .RootFS}}", '{"Type":"layers","Layers":["sha256:aa","sha256:bb"]}'),
    ("{{.Config.Labels | json}}", '{"maintainer":"me","version":"2"}'),
    ('{{json "a<b&c"}}', '"a<b&c"'),
    # range, with, if, variables
    ("{{range .RepoTags}}{{.}},{{end}}", "app:1,app:latest,"),
    ("{{range $i, $t := .RepoTags}}{{$i}}={{$t}} {{end}}", "0=app:1 1=app:latest "),
    ("{{range $k, $v := .Config.Labels}}{{$k}}:{{$v}};{{end}}", "maintainer:me;version:2;"),
    ("{{range .RepoDigests}}x{{else}}none{{end}}", "none"),
    ("{{range .Config.Entrypoint}}[{{.}}]{{end}}", "[/app][--serve]"),
    ("{{with .Config}}{{.WorkingDir}}|{{.Env}}{{end}}", "|[PATH=/bin A=1]"),
    ("{{with .Config.WorkingDir}}set{{else}}unset{{end}}", "unset"),
    ("{{if .Config.Cmd}}cmd{{else if .Config.Entrypoint}}entrypoint{{else}}none{{end}}", "entrypoint"),
    ("{{if and .Config.Env (not .Config.Cmd)}}yes{{end}}", "yes"),
    ("{{$id := .Id}}{{range .RepoTags}}{{.}}@{{$id}} {{end}}", "app:1@sha256:3f5a app:latest@sha256:3f5a "),
    ("{{range .RepoTags}}{{$.Id}} {{end}}", "sha256:3f5a sha256:3f5a "),
    # functions
    ('{{index .Config.Labels "maintainer"}} {{index .RepoTags 1}}', "me app:latest"),
    ('{{join .Config.Env ","}}', "PATH=/bin,A=1"),
    ('{{split "a:b:c" ":"}} {{len .RepoTags}} {{len .Config.Cmd}}', "[a b c] 2 0"),
    ("{{lower .Id | upper}} {{title \"hello there\"}}", "SHA256:3F5A Hello There"),
    ('{{pad "x" 2 1}}|{{truncate .Id 6}}', "  x |sha256"),
    ('{{printf "%s has %d tags" .Id (len .RepoTags)}}', "sha256:3f5a has 2 tags"),
    ('{{printf "%-8s|%5d|%q" "ab" 42 "q"}}', 'ab      |   42|"q"'),
    ('{{print "a" 1 2 "b"}}{{println "!"}}', "a1 2b!\n"),
    ('{{eq .Size 1234567}} {{ne .Id "x"}} {{lt 1 2}} {{ge 2.5 3}} {{eq "b" "a" "b"}}', "true true true false true"),
    ("{{or .Config.WorkingDir \"/\"}}", "/"),
    # whitespace trimming and comments
    ("a  {{- .Size -}}  b", "a1234567b"),
    ("{{/* nothing */}}x{{- /* trimmed */ -}} y", "xy"),
    ("{{range .RepoTags -}}\n  {{.}}\n{{- end}}", "app:1app:latest"),
    ("{{ .Id }}", "sha256:3f5a"),
    ("{{-3}}", "-3"),
])
def test_renders_like_go(template, expected):
    assert render(template, IMAGE) == expected


@pytest.mark.parametrize("template, error", [
    ("{{.Id", "template: :1: unclosed action"),
    ("{{range .RepoTags}}x", "template: :1: unexpected EOF"),
    ("{{end}}", "template: :1: unexpected {{end}}"),
    ("x\n{{nosuch .Id}}", 'template: :2: function "nosuch" not defined'),
    ("{{$x}}", 'template: :1: undefined variable "$x"'),
    ("{{}}", "template: :1: missing value for command"),
    ("{{if}}{{end}}", "template: :1: missing value for if"),
    ('{{template "x"}}', "template: :1: {{template}} is not supported by build-image"),
    ('{{define "x"}}y{{end}}', "template: :1: {{define}} is not supported by build-image"),
    ("{{range .RepoTags}}{{break}}{{end}}", "template: :1: {{break}} is not supported by build-image"),
    ("{{.Id ! }}", "template: :1: bad character '!' in action"),
    ("{{/* open", "template: :1: unclosed comment"),
    ("{{(.Id}}", "template: :1: unclosed left paren"),
])
def test_parse_errors_are_one_line(template, error):
    with pytest.raises(TemplateError) as info:
        render(template, IMAGE)
    assert str(info.value) == error


@pytest.mark.parametrize("template, error", [
    ("{{.Foo}}", 'template: :1:2: executing "" at <.Foo>: can\'t evaluate field Foo in type history'),
    ("ab\ncd {{.ID.X}}", 'template: :2:5: executing "" at <.ID.X>: can\'t evaluate field X in type string'),
    ("{{.ID 1}}", 'template: :1:2: executing "" at <.ID>: can\'t give argument to non-function .ID'),
    ("{{lower .Size}}", 'template: :1:2: executing "" at <lower>: wrong type for value; expected string; got int'),
    ("{{range .ID}}{{end}}", 'template: :1:8: executing "" at <.ID>: range can\'t iterate over abc'),
    ("{{index .Tags 5}}", 'template: :1:2: executing "" at <index>: error calling index: index out of range: 5'),
])
def test_execution_errors_say_where(template, error):
    row = Struct("history", {"ID": "abc", "Size": 3, "Tags": ["a"]})  # a strict struct, as list rows are
    with pytest.raises(TemplateError) as info:
        render(template, row)
    assert str(info.value) == error


def test_tabwriter_aligns_as_go():
    # column blocks: a column is as wide as its widest cell + 3 (at least 10) across consecutive
    # lines that have it; the last cell of a line is never padded; empty cells are padded
    assert tabwrite("a\tb\tc\nlonger-cell-x\tb\n\nx\ty") == (
        "a               b         c\n"
        "longer-cell-x   b\n"
        "\n"
        "x         y")
    assert tabwrite("IMAGE\tSIZE\tCOMMENT\nabc\t0B\t\n") == (
        "IMAGE     SIZE      COMMENT\n"
        "abc       0B        \n")
    assert tabwrite("no tabs at all") == "no tabs at all"


ROWS = [Struct("image", {"ID": "3f5a", "Repository": "app", "Tag": "1"}),
        Struct("image", {"ID": "77ab", "Repository": "127.0.0.1:5000/team/app", "Tag": "latest"})]
HEADERS = {"ID": "IMAGE ID", "Repository": "REPOSITORY", "Tag": "TAG"}
DEFAULT = "table {{.Repository}}\\t{{.Tag}}\\t{{.ID}}"


@pytest.mark.parametrize("format_, expected", [
    ("table", "REPOSITORY                TAG       IMAGE ID\n"
              "app                       1         3f5a\n"
              "127.0.0.1:5000/team/app   latest    77ab\n"),
    ("table {{.Tag}}\\t{{.ID}}", "TAG       IMAGE ID\n1         3f5a\nlatest    77ab\n"),
    ("table {{.Repository | upper}}:{{.Tag}}", "REPOSITORY:TAG\nAPP:1\n127.0.0.1:5000/TEAM/APP:latest\n"),
    ("  {{.Repository}}:{{.Tag}}  ", "app:1\n127.0.0.1:5000/team/app:latest\n"),
    ("{{.ID}}\\n", "3f5a\n\n77ab\n\n"),
    ("json", '{"ID":"3f5a","Repository":"app","Tag":"1"}\n'
             '{"ID":"77ab","Repository":"127.0.0.1:5000/team/app","Tag":"latest"}\n'),
    ("{{json .Tag}}", '"1"\n"latest"\n'),
])
def test_docker_formats(format_, expected):
    assert format_rows(format_, ROWS, HEADERS, DEFAULT) == expected


def test_table_with_no_rows_still_has_its_header():
    assert format_rows("table", [], HEADERS, DEFAULT) == "REPOSITORY   TAG       IMAGE ID\n"


def test_format_errors_carry_dockers_prefix():
    with pytest.raises(TemplateError) as info:
        format_rows("{{.Nope}}", ROWS, HEADERS, DEFAULT)
    assert str(info.value) == ('template parsing error: template: :1:2: executing "" at <.Nope>: '
                               "can't evaluate field Nope in type image")
    with pytest.raises(TemplateError) as info:
        format_rows("table {{.ID", ROWS, HEADERS, DEFAULT)
    assert str(info.value) == "template parsing error: template: :1: unclosed action"
