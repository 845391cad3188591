"""trivpn.records.dataclass behaves as dataclasses.dataclass, class shape by class shape.

Each shape is defined twice, once with each decorator, and every observable behaviour the
codebase relies on is compared: construction (positional, keyword, defaults, factories,
errors), repr, equality, hashing, frozenness, slots, fields/replace/asdict, pattern
matching, copy and pickle, inheritance, explicit methods and __post_init__.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import pickle
from typing import Any

import pytest

from trivpn import records

DECORATORS = {"std": dataclasses.dataclass, "records": records.dataclass}


def shapes(dc: Any) -> dict[str, type]:
    """The same class shapes, built with decorator `dc` (module-level so pickle finds them)."""

    @dc(frozen=True, slots=True)
    class Frozen:
        """A frozen, slotted record."""

        a: int
        b: str = "x"
        c: tuple[int, ...] = dataclasses.field(default_factory=tuple)
        secret: bytes = dataclasses.field(default=b"k", repr=False)
        note: str = dataclasses.field(default="", compare=False)

    @dc(slots=True)
    class Mutable:
        """A mutable, slotted record with a derived field."""

        a: int
        b: int = 2
        total: int = dataclasses.field(init=False, default=0)

        def __post_init__(self) -> None:
            self.total = self.a + self.b

    @dc(frozen=True, slots=True, eq=False)
    class Identity:
        """Compared by identity."""

        a: int

    @dc
    class Plain:
        """Not slotted, not frozen."""

        a: int
        b: dict[str, int] = dataclasses.field(default_factory=dict)

    @dc(frozen=True, slots=True)
    class Empty:
        """No fields."""

    @dc(frozen=True, slots=True)
    class Base:
        """A base record."""

        a: int
        b: int = 1

    @dc(frozen=True, slots=True)
    class Derived(Base):
        """Adds a field and overrides a default."""

        c: int = 3
        b: int = 5

    @dc(frozen=True, slots=True)
    class Custom:
        """Defines its own repr and hash."""

        a: int

        def __repr__(self) -> str:
            return "custom"

        def __hash__(self) -> int:
            return 7

    @dc(slots=True)
    class MutableHashed:
        """Mutable with an explicit hash: kept."""

        a: int

        def __hash__(self) -> int:
            return 11

    @dc(frozen=True, slots=True)
    class OwnInit:
        """Defines its own __init__: kept."""

        a: tuple[int, ...]

        def __init__(self, *a: int) -> None:
            object.__setattr__(self, "a", a)

    return {c.__name__: c for c in (Frozen, Mutable, Identity, Plain, Empty, Base, Derived, Custom,
                                    MutableHashed, OwnInit)}


STD = shapes(dataclasses.dataclass)
OURS = shapes(records.dataclass)
for _kind, _made in (("std", STD), ("records", OURS)):
    for _name, _cls in _made.items():
        _cls.__module__ = __name__
        globals()[f"{_kind}_{_name}"] = _cls
        _cls.__qualname__ = f"{_kind}_{_name}"
        _cls.__name__ = f"{_kind}_{_name}"


def both(name: str) -> tuple[type, type]:
    return STD[name], OURS[name]


def outcome(fn: Any) -> tuple[str, Any]:
    """What calling `fn` gave: a value, or the exception type and message (names stripped)."""
    try:
        return "ok", fn()
    except Exception as exc:  # compared, not swallowed
        text = str(exc).replace("shapes.<locals>.", "")
        return type(exc).__name__, text.replace("std_", "").replace("records_", "")


def reprs(obj: Any) -> str:
    return repr(obj).replace("std_", "").replace("records_", "")


@pytest.mark.parametrize("args,kwargs", [((1,), {}), ((1, "y", (2,)), {}), ((), {"a": 3, "note": "n"}),
                                         ((), {}), ((1, 2, 3, 4, 5, 6), {}), ((1,), {"zz": 1}),
                                         ((1,), {"a": 2})])
def test_construction_repr_eq_hash(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    std, ours = both("Frozen")
    s, o = outcome(lambda: std(*args, **kwargs)), outcome(lambda: ours(*args, **kwargs))
    assert s[0] == o[0]
    if s[0] != "ok":
        assert s[1] == o[1]
        return
    x, y = s[1], o[1]
    assert reprs(x) == reprs(y)
    assert "secret" not in repr(y)
    assert dataclasses.astuple(x) == dataclasses.astuple(y)
    assert hash(x) == hash(std(*args, **kwargs))
    assert y == ours(*args, **kwargs) and hash(y) == hash(ours(*args, **kwargs))
    assert y == dataclasses.replace(y, note="other")  # compare=False
    assert y != dataclasses.replace(y, a=y.a + 1)
    assert (y == x) is False  # another class: NotImplemented both ways


def test_default_factory_gives_each_instance_its_own() -> None:
    plain = both("Plain")[1]
    one, two = plain(1), plain(1)
    one.b["k"] = 1
    assert two.b == {} and one.b is not two.b


def test_frozen_refuses_assignment_and_deletion() -> None:
    for cls in both("Frozen"):
        obj = cls(1)
        with pytest.raises(dataclasses.FrozenInstanceError):
            obj.a = 2  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            del obj.b  # type: ignore[misc]
        assert not hasattr(obj, "__dict__")  # slotted
    # a name that is no field: 3.11's own methods refer to the class before slots replaced
    # it and fail inside `super()`; here the answer is the same as for a field
    with pytest.raises(dataclasses.FrozenInstanceError):
        both("Frozen")[1](1).new = 1  # type: ignore[attr-defined]


def test_mutable_post_init_init_false_and_unhashable() -> None:
    std, ours = both("Mutable")
    x, y = std(1), ours(1)
    assert (x.total, y.total) == (3, 3)
    assert reprs(x) == reprs(y) == "Mutable(a=1, b=2, total=3)"
    y.a = 5
    assert y.a == 5
    with pytest.raises(TypeError, match="unhashable"):
        hash(y)
    assert ours(1, 2) == ours(1, 2) and ours(1, 2) != ours(1, 3)
    assert outcome(lambda: ours(1, 2, 3)) == outcome(lambda: std(1, 2, 3))


def test_eq_false_compares_identity_and_hashes_by_identity() -> None:
    std, ours = both("Identity")
    assert ours(1) != ours(1) and std(1) != std(1)
    obj = ours(1)
    assert obj == obj and hash(obj) == object.__hash__(obj)


def test_plain_and_empty() -> None:
    std, ours = both("Plain")
    y = ours(1)
    y.b["k"] = 1
    y.extra = 2  # not slotted: instances have a __dict__
    assert reprs(y) == reprs(std(1, {"k": 1}))
    assert ours(1) == ours(1, {})
    std_e, ours_e = both("Empty")
    assert ours_e() == ours_e() and hash(ours_e()) == hash(std_e())
    assert reprs(ours_e()) == "Empty()"


def test_inheritance_fields_order_and_defaults() -> None:
    std, ours = both("Derived")
    assert [f.name for f in dataclasses.fields(ours)] == [f.name for f in dataclasses.fields(std)]
    assert reprs(ours(0)) == reprs(std(0)) == "Derived(a=0, b=5, c=3)"
    assert ours(0) != OURS["Base"](0, 5)  # another class
    with pytest.raises(dataclasses.FrozenInstanceError):
        ours(0).c = 1  # type: ignore[misc]


def test_explicit_methods_are_kept() -> None:
    for cls in both("Custom"):
        assert repr(cls(1)) == "custom" and hash(cls(1)) == 7 and cls(1) == cls(1)
    for cls in both("MutableHashed"):
        assert hash(cls(1)) == 11
    for cls in both("OwnInit"):
        assert cls(1, 2).a == (1, 2) and cls(1, 2) == cls(1, 2)


def test_frozen_and_mutable_do_not_inherit_from_each_other() -> None:
    for dc in DECORATORS.values():
        @dc(frozen=True)
        class F:
            a: int

        @dc
        class M:
            a: int

        with pytest.raises(TypeError, match="non-frozen dataclass from a frozen one"):
            dc(type("X", (F,), {"__annotations__": {"b": "int"}}))
        with pytest.raises(TypeError, match="frozen dataclass from a non-frozen one"):
            dc(frozen=True)(type("Y", (M,), {"__annotations__": {"b": "int"}}))


def test_definition_errors_are_raised_when_the_class_is_defined() -> None:
    for dc in DECORATORS.values():
        with pytest.raises(TypeError, match="non-default argument 'b' follows default argument"):
            dc(type("Bad", (), {"__annotations__": {"a": "int", "b": "int"}, "a": 1}))
        with pytest.raises(TypeError, match="Cannot overwrite attribute __setattr__"):
            dc(frozen=True)(type("Bad2", (), {"__annotations__": {"a": "int"},
                                              "__setattr__": lambda self, n, v: None}))


def test_match_copy_pickle_replace_asdict() -> None:
    for kind, made in (("std", STD), ("records", OURS)):
        cls = made["Frozen"]
        obj = cls(4, "q", (1,))
        match obj:
            case cls(a, b):
                assert (a, b) == (4, "q")
            case _:
                pytest.fail(kind)
        assert copy.copy(obj) == obj and copy.deepcopy(obj) == obj
        assert pickle.loads(pickle.dumps(obj)) == obj
        assert dataclasses.asdict(obj)["c"] == (1,)
        assert dataclasses.replace(obj, b="r").b == "r"
        assert dataclasses.is_dataclass(obj)
        mut = made["Mutable"](1)
        assert pickle.loads(pickle.dumps(mut)) == mut


def test_error_messages_name_the_class() -> None:
    _, ours = both("Frozen")
    with pytest.raises(TypeError, match=r"__init__\(\) missing 1 required positional argument: 'a'"):
        ours()
    with pytest.raises(TypeError, match="unexpected keyword argument 'zz'"):
        ours(1, zz=2)


def _compiled(cls: type) -> bool:
    """Whether `cls` has its own compiled `__init__` (not the shared trampoline)."""
    return bool(cls.__dict__["__init__"].__code__.co_varnames[:3] != ("self", "args", "kwargs"))


def test_init_is_compiled_after_a_few_uses_and_never_at_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "COMPILE_AFTER", 3)
    cls = records.dataclass(frozen=True, slots=True)(type("Lazy", (), {"__annotations__": {"a": "int"}}))
    first = cls.__dict__["__init__"]
    for i in range(3):  # the shared __init__ binds the arguments
        assert cls(i).a == i and cls.__dict__["__init__"] is first
    assert cls(3).a == 3
    compiled = cls.__dict__["__init__"]
    assert compiled is not first and compiled.__code__.co_varnames[:2] == ("self", "a")
    assert compiled.__qualname__ == "Lazy.__init__"
    cls(4)
    assert cls.__dict__["__init__"] is compiled
    # a call the shared __init__ would have to refuse compiles at once: the error is the
    # compiled one's, word for word the standard library's
    other = records.dataclass(type("Lazy2", (), {"__annotations__": {"a": "int"}}))
    with pytest.raises(TypeError, match=r"Lazy2.__init__\(\) missing 1 required positional argument: 'a'"):
        other()
    assert _compiled(other)


#: calls per shape, the valid ones first (an invalid call compiles the class's __init__)
CALLS: dict[str, list[tuple[tuple[Any, ...], dict[str, Any]]]] = {
    "Frozen": [((1,), {}), ((1, "y", (2,)), {}), ((), {"a": 3, "note": "n"}),
               ((), {"c": (5,), "a": 1}), ((1, "y"), {"secret": b"s"}),
               ((), {}), ((1, 2, 3, 4, 5, 6), {}), ((1,), {"zz": 1}), ((1,), {"a": 2})],
    "Mutable": [((1,), {}), ((1, 2), {}), ((), {"b": 4, "a": 1}), ((1, 2, 3), {}), ((), {"total": 1})],
    "Plain": [((1,), {}), ((1, {"k": 1}), {}), ((), {"b": {}, "a": 0}), ((), {"b": {}})],
    "Derived": [((0,), {}), ((0, 1, 2), {}), ((), {"c": 9, "a": 1}), ((0, 1, 2, 3), {})],
    "Empty": [((), {}), ((1,), {}), ((), {"x": 1})],
    "Identity": [((1,), {}), ((), {"a": 2})],
}


@pytest.mark.parametrize("after", [0, 10**6], ids=["compiled", "shared"])
def test_both_inits_agree_with_the_standard_library(monkeypatch: pytest.MonkeyPatch, after: int) -> None:
    monkeypatch.setattr(records, "COMPILE_AFTER", after)
    ours = shapes(records.dataclass)  # fresh classes: nothing compiled yet
    for name, calls in CALLS.items():
        refused = False
        for args, kwargs in calls:
            s = outcome(functools.partial(STD[name], *args, **kwargs))
            o = outcome(functools.partial(ours[name], *args, **kwargs))
            assert s[0] == o[0], (name, args, kwargs)
            if s[0] == "ok":
                mine = reprs(o[1]).replace("shapes.<locals>.", "")
                assert mine == reprs(s[1]) and dataclasses.astuple(o[1]) == dataclasses.astuple(s[1])
                assert not hasattr(o[1], "__dict__") or name == "Plain"
            else:
                assert o[1] == s[1], (name, args, kwargs)
                refused = True
            assert _compiled(ours[name]) == (after == 0 or refused), (name, args, kwargs)


def test_the_shared_init_calls_factories_and_post_init_per_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records, "COMPILE_AFTER", 10**6)
    ours = shapes(records.dataclass)
    one, two = ours["Plain"](1), ours["Plain"](1)
    assert one.b == {} and one.b is not two.b
    assert ours["Mutable"](1, 5).total == 6
    assert not _compiled(ours["Plain"]) and not _compiled(ours["Mutable"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        ours["Frozen"](1).a = 2  # type: ignore[misc]


def test_options_it_does_not_implement_go_to_the_standard_library() -> None:
    cls = records.dataclass(order=True, frozen=True)(type("O", (), {"__annotations__": {"a": "int"}}))
    assert cls(1) < cls(2)
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
