"""Package re-exports resolved on first use, so importing one sibling module stays cheap."""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:   # typing costs a CLI's fast paths ~2 ms to import; the annotations are strings
    from typing import Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` for PACKAGE that imports `package.<exports[name]>` on first use."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    return __getattr__
