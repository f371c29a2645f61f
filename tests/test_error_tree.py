"""errors.py draws the whole error tree: every BuildError subclass, under its real parent."""

import importlib
import pkgutil
import re

from builder import errors


def _import_everything() -> None:
    for package in ("builder", "builder.grammar", "builder.cache"):  # the folders grammar/ and cache/
        path = importlib.import_module(package).__path__
        for info in pkgutil.walk_packages(path, package + "."):
            if not info.name.endswith(".__main__"):  # that one runs the CLI
                importlib.import_module(info.name)


def _subclasses(cls):
    for sub in cls.__subclasses__():
        if sub.__module__.startswith("builder."):
            yield sub
            yield from _subclasses(sub)


def _drawn_parents() -> dict[str, str]:
    """The tree in the module docstring: class name -> the name it hangs under."""
    parents: dict[str, str] = {}
    stack: list[str] = []
    for line in errors.__doc__.splitlines():
        match = re.match(r"^    ((?:[│ ]   )*)(?:[├└]── )?([A-Z]\w+)\b", line)
        if not match or (not match.group(1) and "──" not in line and match.group(2) != "BuildError"):
            continue
        depth = len(match.group(1)) // 4 + (1 if "──" in line else 0)
        del stack[depth:]
        if stack:
            parents[match.group(2)] = stack[-1]
        stack.append(match.group(2))
    return parents


def test_every_build_error_is_drawn_under_its_parent():
    _import_everything()
    actual = {cls.__name__: cls.__bases__[0].__name__ for cls in _subclasses(errors.BuildError)}
    assert len(actual) >= 24  # 13 in errors.py, 11 beside the code that raises them
    assert _drawn_parents() == actual
