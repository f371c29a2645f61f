"""`images`, `tag`, `rmi`, `inspect`, `history`: docker's columns, shapes and naming rules.

Images come from `build-image import` of small root filesystem tars (fast, no namespaces) and, for
the history of a real build, from `build-image build` over the busybox registry."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile

import pytest

from builder.cli.images import human_duration, human_size, table
from tests.support.images import build_image, write_context


def cli(root: str, *args: str, check: bool = True, stdin: bytes | None = None, env: dict | None = None
        ) -> subprocess.CompletedProcess:
    """`build-image ARGS... --root ROOT`; stdout and stderr as text unless STDIN (bytes) is given."""
    proc = subprocess.run([sys.executable, "-m", "builder.cli", *args, "--root", root],
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                          capture_output=True, text=stdin is None, timeout=300,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"build-image {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def rootfs_tar(path: str, files: dict[str, bytes]) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def import_image(root: str, tmp_path, name: str | None, files: dict[str, bytes], *changes: str) -> str:
    tar = rootfs_tar(str(tmp_path / f"rootfs-{len(os.listdir(tmp_path))}.tar"), files)
    args = ["import", tar] + ([name] if name else []) + [a for c in changes for a in ("-c", c)]
    return cli(root, *args).stdout.strip()


def rows(output: str) -> list[list[str]]:
    """Table lines split on runs of 3+ spaces (tabwriter's padding), header dropped."""
    return [re.split(r" {3,}", line.strip()) for line in output.splitlines()[1:]]


def test_formatting_matches_go_units():
    assert [human_size(n) for n in (0, 5, 999, 1000, 1234, 2_050_000, 1_234_567_890)] == \
        ["0B", "5B", "999B", "1kB", "1.23kB", "2.05MB", "1.23GB"]
    assert human_size(1_200_000, 4) == "1.2MB"
    assert [human_duration(s) for s in (0.5, 1, 30, 65, 600, 3700, 7200, 3 * 86400, 20 * 86400, 90 * 86400)] == \
        ["Less than a second", "1 second", "30 seconds", "About a minute", "10 minutes", "About an hour",
         "2 hours", "3 days", "2 weeks", "3 months"]
    assert table([["A", "BB"], ["long-cell-here", "x"]]).splitlines() == ["A" + " " * 16 + "BB", "long-cell-here   x"]


def test_images_columns_ids_and_sizes(store_root, tmp_path):
    image_id = import_image(store_root, tmp_path, "app:1", {"etc/hello": b"hello\n", "bin/tool": b"x" * 1500})
    out = cli(store_root, "images").stdout
    assert out.splitlines()[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    [[repo, tag, short, created, size]] = rows(out)
    assert (repo, tag, short, size) == ("app", "1", image_id[7:19], "1.51kB") and created.endswith(" ago")
    assert cli(store_root, "images", "-q").stdout.split() == [image_id[7:19]]
    assert cli(store_root, "images", "-q", "--no-trunc").stdout.split() == [image_id]
    line = json.loads(cli(store_root, "images", "--format", "json").stdout)
    assert (line["Repository"], line["Tag"], line["ID"], line["Size"]) == ("app", "1", image_id[7:19], "1.51kB")
    assert cli(store_root, "images", "--format", "{{.Repository}}:{{.Tag}}").stdout == "app:1\n"


def test_tag_and_filters(store_root, tmp_path):
    first = import_image(store_root, tmp_path, "app:1", {"a": b"1"}, "LABEL tier=web")
    second = import_image(store_root, tmp_path, "app:1", {"b": b"2"})  # moves app:1: first is dangling
    cli(store_root, "tag", "app:1", "127.0.0.1:5999/team/app:v2")
    listed = rows(cli(store_root, "images").stdout)
    assert [r[:3] for r in listed] == [["127.0.0.1:5999/team/app", "v2", second[7:19]],
                                       ["app", "1", second[7:19]], ["<none>", "<none>", first[7:19]]]
    dangling = cli(store_root, "images", "-q", "--filter", "dangling=true").stdout.split()
    assert dangling == [first[7:19]]
    assert cli(store_root, "images", "-q", "--filter", "label=tier=web").stdout.split() == [first[7:19]]
    assert cli(store_root, "images", "-q", "--filter", "label=tier=db").stdout == ""
    by_pattern = rows(cli(store_root, "images", "--filter", "reference=*/team/*").stdout)
    assert [r[:2] for r in by_pattern] == [["127.0.0.1:5999/team/app", "v2"]]
    # an image can be named by a unique prefix of its ID
    cli(store_root, "tag", first[7:13], "old")
    assert cli(store_root, "images", "-q", "old").stdout.split() == [first[7:19]]


def test_filters_before_since_and_combined(store_root, tmp_path):
    old = import_image(store_root, tmp_path, "old:1", {"a": b"1"}, "LABEL tier=web")[7:19]
    mid = import_image(store_root, tmp_path, "mid:1", {"b": b"2"}, "LABEL tier=web", "LABEL team=x")[7:19]
    new = import_image(store_root, tmp_path, "new:1", {"c": b"3"}, "LABEL tier=db")[7:19]

    def ids(*filters: str) -> list[str]:
        return cli(store_root, "images", "-q", *[a for f in filters for a in ("--filter", f)]).stdout.split()

    assert ids() == [new, mid, old]
    assert ids("before=new:1") == [mid, old]
    assert ids("since=old:1") == [new, mid]
    assert ids(f"since={old}", "before=new:1") == [mid]         # by ID prefix and by name
    assert ids("before=new:1", "before=mid:1") == [old]         # every before= holds
    assert ids("since=old:1", "since=mid:1") == [new]           # every since= holds
    assert ids("since=old:1", "label=tier=web") == [mid]        # different keys: AND
    assert ids("label=tier=web", "label=team") == [mid]         # labels: AND
    assert ids("reference=old", "reference=new:*") == [new, old]  # references: OR
    assert ids("dangling=false", "before=mid:1") == [old]
    assert ids("before=old:1") == []
    for bad, message in (("before=nothere", "No such image: nothere:latest"),
                         ("colour=red", "invalid filter 'colour'"),
                         ("dangling", "bad format of filter (expected name=value): dangling"),
                         ("dangling=maybe", "invalid filter 'dangling=maybe'")):
        proc = cli(store_root, "images", "--filter", bad, check=False)
        assert proc.returncode == 1 and proc.stderr == f"ERROR: {message}\n", bad


def test_images_format_table_and_templates(store_root, tmp_path):
    image_id = import_image(store_root, tmp_path, "app:1", {"f": b"x"})
    cli(store_root, "tag", "app:1", "127.0.0.1:5999/team/app:v2")
    short = image_id[7:19]
    out = cli(store_root, "images", "--format", "table {{.Repository}}\\t{{.Tag}}\\t{{.ID}}").stdout
    assert out.splitlines() == ["REPOSITORY                TAG       IMAGE ID",
                                f"127.0.0.1:5999/team/app   v2        {short}",
                                f"app                       1         {short}"]
    out = cli(store_root, "images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}", "--no-trunc").stdout
    assert out == f"127.0.0.1:5999/team/app:v2 {image_id}\napp:1 {image_id}\n"
    out = cli(store_root, "images", "--format", "{{if eq .Tag \"1\"}}{{.Repository | upper}}{{end}}").stdout
    assert out == "\nAPP\n"
    # a format names what is shown: -q only shortens the default table
    assert cli(store_root, "images", "-q", "--format", "{{.Tag}}").stdout == "v2\n1\n"
    proc = cli(store_root, "images", "--format", "{{.Repo}}", check=False)
    assert proc.returncode == 1
    assert proc.stderr == ('ERROR: template parsing error: template: :1:2: executing "" at <.Repo>: '
                           "can't evaluate field Repo in type image\n")
    proc = cli(store_root, "images", "--format", "{{range .Tag}}", check=False)
    assert proc.returncode == 1 and proc.stderr == "ERROR: template parsing error: template: :1: unexpected EOF\n"


def test_history_format_quiet_and_human(store_root, tmp_path):
    image_id = import_image(store_root, tmp_path, "app:1", {"f": b"x" * 1500})
    created = json.loads(cli(store_root, "inspect", "app:1").stdout)[0]["Created"]
    short = image_id[7:19]
    assert cli(store_root, "history", "-q", "app:1").stdout == f"{short}\n"
    assert cli(store_root, "history", "-q", "--no-trunc", "app:1").stdout == f"{image_id}\n"
    out = cli(store_root, "history", "--format", "{{.ID}}|{{.Size}}|{{.Comment}}|{{.CreatedSince}}", "app:1").stdout
    assert out.startswith(f"{short}|1.5kB|Imported from -|") and out.endswith(" ago\n")
    utc = {"TZ": "UTC"}
    out = cli(store_root, "history", "-H=false", "--format", "{{.Size}}|{{.CreatedSince}}|{{.CreatedAt}}", "app:1",
              env=utc).stdout
    assert out == f"1500|{created[:19]}Z|{created[:19]}Z\n"
    table_lines = cli(store_root, "history", "--human=false", "app:1", env=utc).stdout.splitlines()
    assert re.split(r" {3,}", table_lines[0]) == ["IMAGE", "CREATED AT", "CREATED BY", "SIZE", "COMMENT"]
    assert rows("\n".join(table_lines)) == [[short, f"{created[:19]}Z", "1500", "Imported from -"]]
    assert rows(cli(store_root, "history", "-H", "app:1").stdout)[0][-2:] == ["1.5kB", "Imported from -"]
    [line] = cli(store_root, "history", "--format", "json", "app:1", env=utc).stdout.splitlines()
    row = json.loads(line)
    assert list(row) == ["Comment", "CreatedAt", "CreatedBy", "CreatedSince", "ID", "Size"]
    assert (row["ID"], row["Size"], row["CreatedAt"], row["CreatedBy"]) == (short, "1.5kB", f"{created[:19]}Z", "")
    out = cli(store_root, "history", "--format", "table {{.ID}}\\t{{.Comment}}", "app:1").stdout
    assert out.splitlines() == ["IMAGE          COMMENT", f"{short}   Imported from -"]
    proc = cli(store_root, "history", "-H=maybe", "app:1", check=False)
    assert proc.returncode == 1 and "strconv.ParseBool: parsing \"maybe\": invalid syntax" in proc.stderr


def test_inspect_format(store_root, tmp_path):
    image_id = import_image(store_root, tmp_path, "app:1", {"etc/x": b"1"}, "ENV A=1", "ENV B=2",
                            'ENTRYPOINT ["/bin/app"]', "EXPOSE 8080", "LABEL a=b", "LABEL c=d")

    def inspect(template: str, *names: str) -> str:
        return cli(store_root, "inspect", "--format", template, *(names or ("app:1",))).stdout

    assert inspect("{{.Config.Env}}") == "[A=1 B=2]\n"
    assert inspect("{{json .Config.Labels}}") == '{"a":"b","c":"d"}\n'
    assert inspect("{{.Id}}", "app:1", image_id[7:15]) == f"{image_id}\n{image_id}\n"
    assert inspect("{{.Config.Cmd}}|{{json .Config.Cmd}}|{{.Config.ExposedPorts}}|{{.Config.Entrypoint}}") == \
        "[]|null|map[8080/tcp:{}]|[/bin/app]\n"
    assert inspect("{{range $k, $v := .Config.Labels}}{{$k}}={{$v}},{{end}}") == "a=b,c=d,\n"
    assert inspect('{{index .Config.Labels "c"}} {{len .RootFS.Layers}} {{.Os}}/{{.Architecture}}') == "d 1 linux/amd64\n"
    assert inspect("{{.Config.NoSuchField}}") == "<no value>\n"   # docker falls back to the raw JSON
    assert json.loads(cli(store_root, "inspect", "-f", "{{json .}}", "app:1").stdout) == \
        json.loads(cli(store_root, "inspect", "app:1").stdout)[0]
    proc = cli(store_root, "inspect", "--format", "{{.Id", "app:1", check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == "ERROR: template parsing error: template: :1: unclosed action\n"


def test_rmi_untags_then_deletes_keeping_shared_layers(store_root, tmp_path):
    import_image(store_root, tmp_path, "app:1", {"etc/data": b"shared\n"})
    cli(store_root, "tag", "app:1", "app:2")
    layer_blobs = set(os.listdir(os.path.join(store_root, "blobs", "sha256")))

    out = cli(store_root, "rmi", "app:1").stdout
    assert out == "Untagged: app:1\n"  # app:2 still names it
    assert set(os.listdir(os.path.join(store_root, "blobs", "sha256"))) == layer_blobs

    # a second image whose config differs but whose only layer is the same blob
    cli(store_root, "tag", "app:2", "keep:1")
    inspect = json.loads(cli(store_root, "inspect", "keep:1").stdout)[0]
    out = cli(store_root, "rmi", "app:2").stdout
    assert out == "Untagged: app:2\n"
    out = cli(store_root, "rmi", "keep:1").stdout
    assert out == f"Untagged: keep:1\nDeleted: {inspect['Id']}\n"
    assert os.listdir(os.path.join(store_root, "blobs", "sha256")) == []


def test_rmi_shared_layer_survives(store_root, tmp_path):
    tar = rootfs_tar(str(tmp_path / "fs.tar"), {"etc/data": b"same layer\n"})
    one = cli(store_root, "import", tar, "one", "-c", "ENV WHO=one").stdout.strip()
    cli(store_root, "import", tar, "two", "-c", "ENV WHO=two")
    layer = json.loads(cli(store_root, "inspect", "one").stdout)[0]
    blobs_dir = os.path.join(store_root, "blobs", "sha256")
    assert cli(store_root, "rmi", "one").stdout == f"Untagged: one:latest\nDeleted: {one}\n"
    assert not os.path.exists(os.path.join(blobs_dir, one[7:]))
    two = json.loads(cli(store_root, "inspect", "two").stdout)[0]
    assert two["RootFS"] == layer["RootFS"]
    assert cli(store_root, "save", "-o", str(tmp_path / "two.tar"), "two").returncode == 0  # its layer is whole


def test_rmi_by_id_with_several_repositories_needs_force(store_root, tmp_path):
    image_id = import_image(store_root, tmp_path, "app:1", {"f": b"x"})
    cli(store_root, "tag", "app:1", "other:1")
    proc = cli(store_root, "rmi", image_id[7:19], check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"ERROR: conflict: unable to delete {image_id[7:19]} (must be forced) - "
                                   "image is referenced in multiple repositories")
    out = cli(store_root, "rmi", "-f", image_id[7:19]).stdout
    assert out == f"Untagged: app:1\nUntagged: other:1\nDeleted: {image_id}\n"


def test_rmi_unknown_image_reports_and_continues(store_root, tmp_path):
    import_image(store_root, tmp_path, "app:1", {"f": b"x"})
    proc = cli(store_root, "rmi", "nothere", "app:1", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "ERROR: No such image: nothere:latest"
    assert proc.stdout.startswith("Untagged: app:1\nDeleted: sha256:")


def test_inspect_shape(store_root, tmp_path):
    image_id = import_image(store_root, tmp_path, "app:1", {"etc/x": b"12345"},
                            'ENTRYPOINT ["/bin/app"]', "EXPOSE 8080", "WORKDIR /srv", "USER 1000",
                            "VOLUME /data", "LABEL a=b")
    proc = cli(store_root, "inspect", "app:1", "missing:1", check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == "ERROR: No such image: missing:1"
    [doc] = json.loads(proc.stdout)
    assert doc["Id"] == image_id and doc["RepoTags"] == ["app:1"] and doc["RepoDigests"] == []
    assert (doc["Architecture"], doc["Os"], doc["Size"]) == ("amd64", "linux", 5)
    assert doc["RootFS"]["Type"] == "layers" and len(doc["RootFS"]["Layers"]) == 1
    config = doc["Config"]
    assert config["Entrypoint"] == ["/bin/app"] and config["ExposedPorts"] == {"8080/tcp": {}}
    assert (config["WorkingDir"], config["User"], config["Labels"]) == ("/srv", "1000", {"a": "b"})
    assert config["Volumes"] == {"/data": {}} and config["Cmd"] is None
    assert doc["History"] == [{"created": doc["Created"], "comment": "Imported from -"}]
    assert doc["Comment"] == "Imported from -"        # docker reads it from the newest history entry


@pytest.mark.root
@pytest.mark.overlay
@pytest.mark.registry
def test_history_of_a_build(store_root, busybox_registry, tmp_path):
    context = write_context(tmp_path / "ctx", {
        "Dockerfile": f"FROM {busybox_registry.reference}\nENV A=1\n"
                      "RUN echo 0123456789 > /file.txt && echo a long command line that docker truncates\n"
                      'CMD ["sh"]\n',
    })
    build_image("--root", store_root, "-t", "hist", "-q", context)
    [doc] = json.loads(cli(store_root, "inspect", "hist").stdout)
    image_id = doc["Id"]
    assert doc["Comment"] == "buildkit.dockerfile.v0"   # as docker inspect shows a BuildKit image
    listed = rows(cli(store_root, "history", "hist").stdout)
    assert [r[0] for r in listed] == [image_id[7:19], "<missing>", "<missing>", "<missing>"]
    cmd, run, env, base = listed
    assert cmd[2:] == ['CMD ["sh"]', "0B", "buildkit.dockerfile.v0"]
    assert run[2].endswith("…") and len(run[2]) == 45 and run[3] == "11B"
    assert env[2:4] == ["ENV A=1", "0B"]
    assert cli(store_root, "history", "-q", "hist").stdout.split() == [image_id[7:19]] + ["<missing>"] * 3
    created_by = cli(store_root, "history", "--format", "{{.CreatedBy}}", "hist").stdout.splitlines()
    assert created_by[:2] == ['CMD ["sh"]', listed[1][2]] and created_by[2] == "ENV A=1"
    full = cli(store_root, "history", "--no-trunc", "hist").stdout
    assert image_id in full and "echo a long command line that docker truncates # buildkit" in full
    # the base image pulled for the build is a named local image, as after `docker pull`
    assert "<none>" not in cli(store_root, "images", "--filter", "dangling=true").stdout
    assert "/busybox " in cli(store_root, "images").stdout
