"""Python values as JSON that keeps their types: tuples, lists, dicts with any keys, bytes, and
records (builder.plumbing.records) of classes named in a table, never any other class.

JSON has neither tuples nor non-string keys nor bytes, and a plain ``json.dumps`` would turn them
into lists and strings; every container is tagged so that decoding gives back the same value:

    {"t": [...]}  a tuple           {"l": [...]}  a list           {"d": [[k, v], ...]}  a dict
    {"b": "..."}  bytes (base64)    {"r": NAME, "f": {...}, "i": N}  a record   {"s": N}  record N again

A record met twice (one vertex as the input of two others; for frozen records, an equal one) is
written once and referred to by number after that, so shared structure stays shared and the file
stays small. Decoding makes a
record only of a class in the table it is given (data in, objects of known types out: this is not
pickle), through its __init__, so a damaged file gives a ValueError or TypeError, not an object
that breaks later.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping


def encode(value, names: Mapping[type, str] | None = None):
    """VALUE as JSON-able data; NAMES: record class -> its name in the file (others refused)."""
    return _Encoder(names or {}).encode(value)


def decode(data, classes: Mapping[str, type] | None = None):
    """What ``encode`` made, back; CLASSES: name -> record class (the inverse of its NAMES)."""
    return _Decoder(classes or {}).decode(data)


def record_table(*modules) -> dict[str, type]:
    """Name -> class for every record class defined in MODULES: ``module:QualName``."""
    table = {}
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, type) and "__record_fields__" in value.__dict__ and value.__module__ == module.__name__:
                table[f"{module.__name__}:{value.__qualname__}"] = value
    return table


class _Encoder:
    def __init__(self, names: Mapping[type, str]):
        self.names = names
        self.seen: dict[int, int] = {}
        self.keep: list = []  # what `seen` numbers, alive until the end (ids are not reused meanwhile)

    def encode(self, value):
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, tuple):
            return {"t": [self.encode(v) for v in value]}
        if isinstance(value, list):
            return {"l": [self.encode(v) for v in value]}
        if isinstance(value, dict):
            return {"d": [[self.encode(k), self.encode(v)] for k, v in value.items()]}
        if isinstance(value, bytes):
            return {"b": base64.b64encode(value).decode()}
        name = self.names.get(type(value))
        if name is None:
            raise TypeError(f"cannot encode a {type(value).__qualname__}")
        key = _identity(value)
        number = self.seen.get(key)
        if number is not None:
            return {"s": number}
        number = self.seen[key] = len(self.seen)
        self.keep.append(value)
        fields = {f.name: self.encode(getattr(value, f.name)) for f in type(value).__record_fields__ if f.init}
        return {"r": name, "i": number, "f": fields}


def _identity(record):
    """Equal frozen records are one (a vertex the converter made twice is written once); others
    are themselves."""
    if getattr(type(record), "__record_params__", (False,))[0]:
        try:
            hash(record)
        except TypeError:  # a frozen record holding a dict
            pass
        else:
            return ("equal", record)
    return ("id", id(record))


class _Decoder:
    def __init__(self, classes: Mapping[str, type]):
        self.classes = classes
        self.made: dict[int, object] = {}

    def decode(self, data):
        if data is None or isinstance(data, (bool, int, float, str)):
            return data
        if isinstance(data, list) or not isinstance(data, dict) or len(data) not in (1, 3):
            raise ValueError("not a tagged value")
        if len(data) == 3:
            return self._record(data)
        (tag, body), = data.items()
        if tag == "t":
            return tuple(self.decode(v) for v in _list(body))
        if tag == "l":
            return [self.decode(v) for v in _list(body)]
        if tag == "d":
            return {self.decode(k): self.decode(v) for k, v in (_pair(item) for item in _list(body))}
        if tag == "b" and isinstance(body, str):
            return base64.b64decode(body, validate=True)
        if tag == "s" and isinstance(body, int) and body in self.made:
            return self.made[body]
        raise ValueError(f"unknown tag {tag!r}")

    def _record(self, data: dict):
        cls = self.classes.get(data.get("r"))
        number, fields = data.get("i"), data.get("f")
        if cls is None or not isinstance(number, int) or number in self.made or not isinstance(fields, dict):
            raise ValueError(f"not a known record: {data.get('r')!r}")
        made = self.made[number] = cls(**{name: self.decode(v) for name, v in fields.items()})
        return made


def _list(body) -> list:
    if not isinstance(body, list):
        raise ValueError("a tagged container holds a list")
    return body


def _pair(item):
    if not isinstance(item, list) or len(item) != 2:
        raise ValueError("a dict item is a [key, value] pair")
    return item
