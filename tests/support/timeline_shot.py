"""A `--timeline` page in Debian's headless Chromium: its screenshot and its DOM, and the demo build
whose timeline is the README's picture.

    python -m tests.support.timeline_shot fixtures/timeline.png

starts a registry with busybox, builds DEMO twice in a temporary store (the second time after both
stages' files changed, so the picture has cached steps, steps that ran with their reasons, and two
stages side by side), and screenshots the second build's timeline. tests/test_timeline.py uses the same
functions.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

CHROMIUM = "chromium"

DEMO = {
    "Dockerfile": (
        "FROM {base} AS tools\n"
        "COPY tools.txt /tools.txt\n"
        "RUN sleep 1 && cp /tools.txt /built-tools\n"
        "\n"
        "FROM {base} AS app\n"
        "COPY app.txt /app.txt\n"
        "RUN sleep 0.3 && cp /app.txt /built-app\n"
        "\n"
        "FROM {base}\n"
        "RUN echo base > /base\n"
        "COPY --from=tools /built-tools /opt/\n"
        "COPY --from=app /built-app /opt/\n"
        "RUN ls /opt > /manifest\n"),
    "tools.txt": "tools v1\n",
    "app.txt": "app v1\n",
}


def chromium_available() -> bool:
    return shutil.which(CHROMIUM) is not None


def _chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    # A throwaway profile: nothing is read from or left in the user's home.
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                               "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def page_height(html: str) -> int:
    """Room for the whole page: the SVG's height plus the table's rows."""
    svg = int(re.search(r'<svg [^>]*height="(\d+)"', html).group(1))
    return 150 + svg + 31 * html.count("<tr")


def screenshot(html_path: str, png_path: str, width: int = 1130) -> None:
    with open(html_path, encoding="utf-8") as f:
        height = page_height(f.read())
    proc = _chromium(f"--window-size={width},{height}", f"--screenshot={os.path.abspath(png_path)}",
                     "file://" + os.path.abspath(html_path))
    if proc.returncode != 0 or not os.path.exists(png_path):
        raise RuntimeError(f"chromium --screenshot failed ({proc.returncode}): {proc.stderr[-2000:]}")


def dump_dom(html_path: str) -> str:
    """The DOM as Chromium parsed it (--dump-dom)."""
    proc = _chromium("--dump-dom", "file://" + os.path.abspath(html_path))
    if proc.returncode != 0:
        raise RuntimeError(f"chromium --dump-dom failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def demo_build(workdir: str, base: str, root: str) -> tuple[str, str]:
    """Builds DEMO, changes app.txt, builds again with --timeline; returns (html path, plain progress)."""
    from tests.support.images import build_image, write_context

    context = write_context(os.path.join(workdir, "demo"),
                            {name: text.format(base=base) for name, text in DEMO.items()})
    build_image("--root", root, "--progress", "plain", "--jobs", "2", context)
    write_context(context, {"app.txt": "app v2\n", "tools.txt": "tools v2\n"})
    html = os.path.join(workdir, "timeline.html")
    proc = build_image("--root", root, "--progress", "plain", "--jobs", "2", "--timeline", html,
                       "--trace", os.path.join(workdir, "trace.json"), context)
    return html, proc.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.timeline_shot", description=__doc__.splitlines()[0])
    parser.add_argument("png", help="where the screenshot goes (the README's: fixtures/timeline.png)")
    ns = parser.parse_args(argv)
    from tests.support.baseimage import push_busybox_image
    from tests.support.registry import Registry

    with Registry() as registry, tempfile.TemporaryDirectory(prefix="timeline-shot-") as workdir:
        push_busybox_image(registry.host)
        html, _ = demo_build(workdir, f"{registry.host}/busybox:latest", os.path.join(workdir, "store"))
        # The page names the registry's random port; the picture should not.
        with open(html, encoding="utf-8") as f:
            text = f.read().replace(registry.host + "/", "")
        with open(html, "w", encoding="utf-8") as f:
            f.write(text)
        screenshot(html, ns.png)
    print(f"wrote {ns.png} ({os.path.getsize(ns.png)} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
