"""Record classes as ``dataclasses`` makes them, without its cost at import time.

``dataclasses.dataclass`` writes every method of a class as source text and compiles it with
``exec`` when the class is defined: 0.5-2 ms a class on these machines. A build defines about 110
record classes before its first step; measured with py-spy, making them was about a quarter of a
cold build's main-thread time. Here the methods are shared functions that read the class's field
table, so defining a class costs tens of microseconds. Making an instance costs a few microseconds
more than with dataclasses, which no build notices: records are few and small.

What this code base uses of dataclasses, with the same behaviour: ``frozen``, ``kw_only``, eq
(always), ``field(default=, default_factory=, repr=, compare=, hash=, init=)``, ``ClassVar``
annotations (not fields), ``__post_init__``, records deriving from records, an ``__eq__`` or
``__hash__`` written in the class body (kept), ``__match_args__``. ``fields``, ``replace`` and
``asdict`` work on these records. ``tests/test_records.py`` checks each against dataclasses.
"""

from __future__ import annotations

import threading

__all__ = ["FrozenInstanceError", "MISSING", "Field", "asdict", "dataclass", "field", "fields", "replace"]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()
_FIELDS = "__record_fields__"


class FrozenInstanceError(AttributeError):
    """Assigning to or deleting a field of a frozen record."""


class Field:
    __slots__ = ("name", "type", "default", "default_factory", "init", "repr", "hash", "compare", "kw_only")

    def __init__(self, default=MISSING, default_factory=MISSING, init=True, repr=True, hash=None, compare=True,
                 kw_only=MISSING):
        if default is not MISSING and default_factory is not MISSING:
            raise ValueError("cannot specify both default and default_factory")
        self.name = ""
        self.type = None
        self.default, self.default_factory = default, default_factory
        self.init, self.repr, self.hash, self.compare, self.kw_only = init, repr, hash, compare, kw_only

    def _copy(self) -> "Field":
        copy = Field(self.default, self.default_factory, self.init, self.repr, self.hash, self.compare, self.kw_only)
        copy.name, copy.type = self.name, self.type
        return copy

    def __repr__(self) -> str:
        return f"Field(name={self.name!r}, default={self.default!r}, kw_only={self.kw_only!r})"


def field(*, default=MISSING, default_factory=MISSING, init=True, repr=True, hash=None, compare=True,
          kw_only=MISSING) -> Field:
    return Field(default, default_factory, init, repr, hash, compare, kw_only)


def dataclass(cls=None, /, *, frozen: bool = False, kw_only: bool = False):
    """``@dataclass``, ``@dataclass(frozen=True)``, ``@dataclass(frozen=True, kw_only=True)``."""
    def wrap(cls):
        return _make_record(cls, frozen, kw_only)

    return wrap if cls is None else wrap(cls)


def fields(record) -> tuple[Field, ...]:
    try:
        return getattr(record, _FIELDS)
    except AttributeError:
        raise TypeError("must be called with a record type or instance") from None


def replace(record, /, **changes):
    """A new record like RECORD with CHANGES (its __init__ and __post_init__ run again)."""
    for f in fields(record):
        if not f.init:
            if f.name in changes:
                raise ValueError(f"field {f.name} is declared with init=False, it cannot be specified with replace()")
        elif f.name not in changes:
            changes[f.name] = getattr(record, f.name)
    return record.__class__(**changes)


def asdict(record) -> dict:
    """RECORD as a dict, recursively (records, lists, tuples and dicts in it are converted too)."""
    if not hasattr(type(record), _FIELDS):
        raise TypeError("asdict() should be called on record instances")
    return _asdict(record)


def _asdict(value):
    if hasattr(type(value), _FIELDS):
        return {f.name: _asdict(getattr(value, f.name)) for f in getattr(value, _FIELDS)}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*[_asdict(v) for v in value])
    if isinstance(value, (list, tuple)):
        return type(value)(_asdict(v) for v in value)
    if isinstance(value, dict):
        return type(value)((_asdict(k), _asdict(v)) for k, v in value.items())
    return value


# ---- making the class ----------------------------------------------------------------------------

def _is_classvar(annotation) -> bool:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return text.startswith(("ClassVar", "typing.ClassVar"))


def _collect_fields(cls, kw_only: bool) -> tuple[Field, ...]:
    by_name: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        for f in base.__dict__.get(_FIELDS, ()):
            by_name[f.name] = f
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if _is_classvar(annotation):
            continue
        value = cls.__dict__.get(name, MISSING)
        if isinstance(value, Field):
            made = value._copy()
        else:
            made = Field(default=value)
        made.name, made.type = name, annotation
        if made.kw_only is MISSING:
            made.kw_only = kw_only
        by_name[name] = made  # a base's field named again keeps its place, as in dataclasses
        # As dataclasses: a plain default stays a class attribute; a field() object does not.
        if isinstance(value, Field):
            if made.default is MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, made.default)
    return tuple(by_name.values())


def _make_record(cls, frozen: bool, kw_only: bool):
    for base in cls.__mro__[1:]:
        params = base.__dict__.get("__record_params__")
        if params is not None and params[0] != frozen:
            raise TypeError("cannot inherit frozen record from a non-frozen one" if frozen
                            else "cannot inherit non-frozen record from a frozen one")
    all_fields = _collect_fields(cls, kw_only)
    positional = [f for f in all_fields if f.init and not f.kw_only]
    seen_default = False
    for f in positional:
        has_default = f.default is not MISSING or f.default_factory is not MISSING
        if seen_default and not has_default:
            raise TypeError(f"non-default argument {f.name!r} follows default argument")
        seen_default = seen_default or has_default
    setattr(cls, _FIELDS, all_fields)
    cls.__record_params__ = (frozen, kw_only)
    cls.__match_args__ = tuple(f.name for f in positional)
    # What the class body wrote itself is kept (read before anything is set on the class). A body
    # with __eq__ and no __hash__ gets __hash__ = None from Python: that is not a hash of its own.
    own = dict(cls.__dict__)
    class_hash = own.get("__hash__", MISSING)
    explicit_hash = not (class_hash is MISSING or (class_hash is None and "__eq__" in own))
    if "__init__" not in own:
        cls.__init__ = _init_for(cls, all_fields, positional)
    if "__repr__" not in own:
        cls.__repr__ = _repr
    if "__eq__" not in own:
        cls.__eq__ = _eq
    if not explicit_hash:
        cls.__hash__ = _hash if frozen else None  # eq without frozen: unhashable, as in dataclasses
    if frozen:
        names = frozenset(f.name for f in all_fields)
        cls.__setattr__ = _frozen_setattr(cls, names)
        cls.__delattr__ = _frozen_delattr(cls, names)
    return cls


def _init_for(cls, all_fields, positional):
    index = {f.name: f for f in all_fields if f.init}
    names = [f.name for f in positional]
    init_fields = [(f.name, f.default, f.default_factory) for f in all_fields if f.init]
    not_init = [(f.name, f.default, f.default_factory) for f in all_fields if not f.init]
    post_init = getattr(cls, "__post_init__", None) is not None
    qualname = cls.__qualname__

    def __init__(self, *args, **kwargs):
        if len(args) > len(names):
            raise TypeError(f"{qualname}.__init__() takes {len(names) + 1} positional arguments "
                            f"but {len(args) + 1} were given")
        values = dict(zip(names, args))
        for name, value in kwargs.items():
            if name not in index:
                raise TypeError(f"{qualname}.__init__() got an unexpected keyword argument {name!r}")
            if name in values:
                raise TypeError(f"{qualname}.__init__() got multiple values for argument {name!r}")
            values[name] = value
        if len(values) < len(init_fields):
            for name, default, factory in init_fields:
                if name not in values:
                    if default is not MISSING:
                        values[name] = default
                    elif factory is not MISSING:
                        values[name] = factory()
                    else:
                        raise TypeError(f"{qualname}.__init__() missing 1 required argument: {name!r}")
        for name, default, factory in not_init:
            if default is not MISSING:
                values[name] = default
            elif factory is not MISSING:
                values[name] = factory()
        self.__dict__.update(values)  # (frozen too: its __setattr__ guards assignments after this)
        if post_init:
            self.__post_init__()

    __init__.__qualname__ = f"{qualname}.__init__"
    return __init__


_repr_running = threading.local()


def _repr(self) -> str:
    running = _repr_running.__dict__.setdefault("ids", set())
    if id(self) in running:
        return "..."
    running.add(id(self))
    try:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in getattr(self, _FIELDS) if f.repr)
    finally:
        running.discard(id(self))
    return f"{type(self).__qualname__}({shown})"


def _compared(self) -> tuple:
    return tuple(getattr(self, f.name) for f in getattr(self, _FIELDS) if f.compare)


def _eq(self, other):
    if other.__class__ is self.__class__:
        return _compared(self) == _compared(other)
    return NotImplemented


def _hash(self) -> int:
    return hash(tuple(getattr(self, f.name) for f in getattr(self, _FIELDS)
                      if (f.compare if f.hash is None else f.hash)))


def _frozen_setattr(cls, names: frozenset):
    def __setattr__(self, name, value):
        if type(self) is cls or name in names:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        super(cls, self).__setattr__(name, value)

    return __setattr__


def _frozen_delattr(cls, names: frozenset):
    def __delattr__(self, name):
        if type(self) is cls or name in names:
            raise FrozenInstanceError(f"cannot delete field {name!r}")
        super(cls, self).__delattr__(name)

    return __delattr__
