"""The public API: `builder.build` stays callable after its machinery is imported, the option and
result types are exported from `builder`, and the README's example runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import builder

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _readme_example() -> str:
    with open(README) as f:
        text = f.read()
    section = text.split("### The Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_types_are_exported_and_build_is_still_the_function_after_the_pipeline_is_imported():
    import builder.pipeline

    assert callable(builder.build) and builder.build.__module__ == "builder"
    assert builder.BuildOptions is builder.pipeline.BuildOptions
    assert builder.OutputSpec is builder.pipeline.OutputSpec
    assert builder.BuildResult is builder.pipeline.BuildResult


def test_options_take_the_clis_strings():
    options = builder.BuildOptions("ctx", tags="app:1", outputs=["type=oci,dest=out.tar", "type=local,dest=d"],
                                   secrets=["id=token,env=HOME"], allow="network.host")
    assert options.outputs == (builder.OutputSpec("oci", (("dest", "out.tar"),)),
                               builder.OutputSpec("local", (("dest", "d"),)))
    assert options.tags == ("app:1",) and options.allow == ("network.host",)
    assert options.secrets[0].id == "token"


def test_a_bad_output_string_is_a_build_error():
    with pytest.raises(builder.BuildError, match="type must be"):
        builder.BuildOptions("ctx", outputs=["type=floppy"])


@pytest.mark.root
@pytest.mark.overlay
def test_readme_example_runs(tmp_path):
    env = {**os.environ, "BUILD_IMAGE_ROOT": str(tmp_path / "store")}
    done = subprocess.run([sys.executable, "-c", _readme_example()], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    image_id, _, tags = done.stdout.strip().partition(" ")
    assert image_id.startswith("sha256:") and "docker.io/library/hello:1" in tags
    assert (tmp_path / "hello.tar").stat().st_size > 0
