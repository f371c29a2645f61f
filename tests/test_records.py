"""builder.plumbing.records behaves as dataclasses does, for what the code base uses of it: each
class here is made twice, by dataclasses and by records, and both must answer alike."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest

from builder.plumbing import records


def make(decorate, field):
    """The same family of classes, made with DECORATE (a dataclass-like decorator) and FIELD."""

    @decorate(frozen=True)
    class Point:
        x: int
        y: int = 0
        tags: tuple = ()
        extra: dict = field(default_factory=dict, compare=False, hash=False)
        note: str = field(default="", repr=False)

    @decorate(frozen=True, kw_only=True)
    class Base:
        kind: ClassVar[str] = "base"
        flags: tuple = ()
        line: int

    @decorate(frozen=True, kw_only=True)
    class Child(Base):
        kind: ClassVar[str] = "child"
        name: str
        flags: tuple = ("f",)        # a base field named again: new default, same place

    @decorate
    class Mutable:
        items: list = field(default_factory=list)
        count: int = 0

    @decorate(frozen=True)
    class Checked:
        value: str
        length: int = 0

        def __post_init__(self):
            object.__setattr__(self, "length", len(self.value))

    @decorate(frozen=True)
    class OwnIdentity:
        key: str
        payload: str = ""

        def __hash__(self) -> int:
            return hash(self.key)

        def __eq__(self, other) -> bool:
            return isinstance(other, OwnIdentity) and other.key == self.key

    @decorate
    class Outer:
        inner: Point
        points: list = field(default_factory=list)
        table: dict = field(default_factory=dict)

    return dict(Point=Point, Base=Base, Child=Child, Mutable=Mutable, Checked=Checked,
                OwnIdentity=OwnIdentity, Outer=Outer)


DC = make(dataclasses.dataclass, dataclasses.field)
RC = make(records.dataclass, records.field)
FAMILIES = [pytest.param((DC, dataclasses), id="dataclasses"), pytest.param((RC, records), id="records")]


def both(name):
    return DC[name], RC[name]


def test_repr_is_dataclasses_repr():
    assert repr(RC["Point"](1, 2, extra={"a": 1}, note="hidden")) == repr(DC["Point"](1, 2, extra={"a": 1}, note="x"))
    assert repr(RC["Child"](name="n", line=3)) == repr(DC["Child"](name="n", line=3))
    assert repr(RC["Mutable"]([1])) == repr(DC["Mutable"]([1]))
    looped = RC["Mutable"]()
    looped.items.append(looped)
    assert repr(looped) == repr(_looped(DC["Mutable"]))


def _looped(cls):
    value = cls()
    value.items.append(value)
    return value


@pytest.mark.parametrize("family", FAMILIES)
def test_init_defaults_and_keywords(family):
    classes, _ = family
    point = classes["Point"](1, y=2)
    assert (point.x, point.y, point.tags, point.extra, point.note) == (1, 2, (), {}, "")
    assert classes["Point"](1).extra is not classes["Point"](1).extra   # a fresh default each time
    child = classes["Child"](name="n", line=3)
    assert (child.flags, child.line, child.name, child.kind) == (("f",), 3, "n", "child")
    assert classes["Base"](line=1).flags == () and classes["Base"].kind == "base"
    with pytest.raises(TypeError):
        classes["Child"]("n", 3)                 # kw_only: no positional arguments
    with pytest.raises(TypeError):
        classes["Point"]()                       # x is required
    with pytest.raises(TypeError):
        classes["Point"](1, nope=2)
    with pytest.raises(TypeError):
        classes["Point"](1, x=1)
    with pytest.raises(TypeError):
        classes["Point"](1, 2, (), {}, "", "too many")
    assert classes["Checked"]("abc").length == 3


@pytest.mark.parametrize("family", FAMILIES)
def test_equality_and_hashing(family):
    classes, _ = family
    Point = classes["Point"]
    assert Point(1, 2) == Point(1, 2) and Point(1, 2) != Point(1, 3)
    assert Point(1, extra={"a": 1}) == Point(1)                  # compare=False
    assert hash(Point(1, extra={"a": 1})) == hash(Point(1))      # hash=False
    assert Point(1) != classes["Checked"]("1") and Point(1) != (1, 0, (), {}, "")
    with pytest.raises(TypeError):
        hash(classes["Mutable"]())                               # eq without frozen: unhashable
    assert classes["Mutable"]([1]) == classes["Mutable"]([1])
    own = classes["OwnIdentity"]
    assert own("k", "a") == own("k", "b") and hash(own("k", "a")) == hash("k")
    assert {Point(1), Point(1)} == {Point(1)}


@pytest.mark.parametrize("family", FAMILIES)
def test_frozen_records_refuse_assignment(family):
    classes, module = family
    point = classes["Point"](1)
    with pytest.raises(module.FrozenInstanceError, match="cannot assign to field 'x'"):
        point.x = 2
    with pytest.raises(AttributeError):
        point.other = 2
    with pytest.raises(module.FrozenInstanceError):
        del point.x
    mutable = classes["Mutable"]()
    mutable.count = 3
    assert mutable.count == 3


@pytest.mark.parametrize("family", FAMILIES)
def test_fields_replace_and_asdict(family):
    classes, module = family
    assert [f.name for f in module.fields(classes["Child"])] == ["flags", "line", "name"]
    assert [f.name for f in module.fields(classes["Point"](1))] == ["x", "y", "tags", "extra", "note"]
    point = classes["Point"](1, 2)
    moved = module.replace(point, y=5)
    assert (moved.x, moved.y) == (1, 5) and point.y == 2
    assert module.replace(classes["Checked"]("ab"), value="abcd").length == 4   # __post_init__ again
    child = module.replace(classes["Child"](name="n", line=1), line=2)
    assert (child.name, child.line) == ("n", 2)
    outer = classes["Outer"](point, [point], {"p": point})
    expected = {"x": 1, "y": 2, "tags": (), "extra": {}, "note": ""}
    assert module.asdict(outer) == {"inner": expected, "points": [expected], "table": {"p": expected}}
    with pytest.raises(TypeError):
        module.asdict(point.x)
    with pytest.raises(TypeError):
        module.replace(point, nope=1)


def test_class_attributes_are_what_dataclasses_leaves():
    for name in ("x", "y", "tags", "extra", "note"):
        assert hasattr(DC["Point"], name) == hasattr(RC["Point"], name), name
        if hasattr(DC["Point"], name):
            assert getattr(DC["Point"], name) == getattr(RC["Point"], name)
    assert DC["Point"].__match_args__ == RC["Point"].__match_args__ == ("x", "y", "tags", "extra", "note")
    assert RC["Child"].__match_args__ == DC["Child"].__match_args__ == ()


def test_a_required_positional_field_after_a_default_is_refused_like_dataclasses():
    for decorate in (dataclasses.dataclass, records.dataclass):
        with pytest.raises(TypeError, match="non-default argument 'b' follows default argument"):
            @decorate
            class Bad:
                a: int = 0
                b: int


def test_records_pickle_by_reference():
    import pickle

    from builder.image.media import Descriptor

    descriptor = Descriptor("application/octet-stream", "sha256:" + "0" * 64, 3)
    assert pickle.loads(pickle.dumps(descriptor)) == descriptor
