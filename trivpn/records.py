"""`dataclass` with the standard library's semantics, minus its per-class compiling.

Why: `dataclasses.dataclass` writes the source of every generated method (`__init__`,
`__repr__`, `__eq__`, `__hash__`, and a frozen class's `__setattr__`/`__delattr__`) and
compiles each with its own `exec` when the class statement runs. Measured
(docs/performance.md, "A quarter of the imports is dataclasses building methods"), that was
26 % of `trivpn connect`'s import time: 91 classes, 40 of which no start-up ever
instantiates. Here only `__init__` is compiled, on its class's first instantiation; the
others are small shared functions built from the field list (`operator.attrgetter` for
equality and hashing, a closure for frozenness), so a class statement runs no compiler.
Compiling even that `__init__` cost ≈ 0.15 ms per class, 49 classes before a connect's
first ping (7–11 ms, docs/performance.md): so a class's first `COMPILE_AFTER`
instantiations go through one shared `__init__` that binds the arguments from the field
list, and only a class made more often than that gets its own compiled `__init__` (about
4× faster per call). Anything but a plain, valid call (a missing, unexpected or repeated
argument) compiles at once and lets the compiled `__init__` raise the standard error.

How: the standard library still processes the class with its generated methods switched
off (`init=False, repr=False, eq=False, frozen=False`), so the fields, `__slots__`,
`__match_args__`, `dataclasses.fields`/`replace`/`asdict` and the class's identity are
exactly its own; this module then adds the methods under the same rules (a method the
class body defines is kept; `__hash__` follows the standard table for `eq`/`frozen`/an
explicit hash; a frozen class refuses assignment with `FrozenInstanceError`; frozen and
non-frozen dataclasses do not inherit from each other). Options it does not implement
(`order`, `unsafe_hash`, `kw_only`, `init=False`, `InitVar` fields, …) hand the class to
`dataclasses.dataclass` unchanged. `typing.dataclass_transform` tells type checkers the
decorator is a dataclass one, so mypy checks constructors and frozenness as before.
"""

from __future__ import annotations

import dataclasses
import reprlib
import threading
from collections.abc import Callable
from dataclasses import MISSING, Field, FrozenInstanceError, field
from operator import attrgetter
from typing import Any, TypeVar, dataclass_transform, overload

__all__ = ["COMPILE_AFTER", "dataclass", "field"]

_T = TypeVar("_T")
#: the marker for "this argument was left out: call the default factory"
_HAS_FACTORY = object()
#: what a class built here records about itself (the standard `__dataclass_params__`
#: says `frozen=False` for every class built here, since its own methods are off)
_FROZEN = "__trivpn_frozen__"
_compile_lock = threading.Lock()


@overload
def dataclass(cls: type[_T], /) -> type[_T]: ...


@overload
def dataclass(*, init: bool = True, repr: bool = True, eq: bool = True, order: bool = False,
              unsafe_hash: bool = False, frozen: bool = False, match_args: bool = True,
              kw_only: bool = False, slots: bool = False) -> Callable[[type[_T]], type[_T]]: ...


@dataclass_transform(field_specifiers=(field, Field))
def dataclass(cls: type[_T] | None = None, /, *, init: bool = True, repr: bool = True, eq: bool = True,
              order: bool = False, unsafe_hash: bool = False, frozen: bool = False,
              match_args: bool = True, kw_only: bool = False,
              slots: bool = False) -> type[_T] | Callable[[type[_T]], type[_T]]:
    """`dataclasses.dataclass`, with `__init__` compiled on first use (module docstring)."""
    std = dict(init=init, repr=repr, eq=eq, order=order, unsafe_hash=unsafe_hash, frozen=frozen,
               match_args=match_args, kw_only=kw_only, slots=slots)

    def wrap(c: type[_T]) -> type[_T]:
        if order or unsafe_hash or kw_only or not init or not repr or _has_pseudo_fields(c):
            return dataclasses.dataclass(c, **std)
        return _build(c, eq=eq, frozen=frozen, match_args=match_args, slots=slots)

    return wrap if cls is None else wrap(cls)


def _has_pseudo_fields(cls: type) -> bool:
    """Whether an annotation is an `InitVar` or a `ClassVar` (left to the standard library)."""
    for ann in cls.__dict__.get("__annotations__", {}).values():
        text = ann if isinstance(ann, str) else getattr(ann, "__name__", "") + str(ann)
        if "InitVar" in text or "ClassVar" in text:
            return True
    return False


def _build(cls: type[_T], *, eq: bool, frozen: bool, match_args: bool, slots: bool) -> type[_T]:
    body = cls.__dict__
    explicit = {name for name in ("__init__", "__repr__", "__eq__", "__setattr__", "__delattr__")
                if name in body}
    class_hash = body.get("__hash__", MISSING)
    has_explicit_hash = not (class_hash is MISSING or (class_hash is None and "__eq__" in body))
    if frozen and explicit & {"__setattr__", "__delattr__"}:
        name = sorted(explicit & {"__setattr__", "__delattr__"})[-1]
        raise TypeError(f"Cannot overwrite attribute {name} in class {cls.__name__}")
    for base in cls.__mro__[1:-1]:
        if "__dataclass_fields__" in base.__dict__:
            base_frozen = getattr(base, _FROZEN, base.__dataclass_params__.frozen)  # type: ignore[attr-defined]
            if base_frozen and not frozen:
                raise TypeError("cannot inherit non-frozen dataclass from a frozen one")
            if frozen and not base_frozen:
                raise TypeError("cannot inherit frozen dataclass from a non-frozen one")
    if not cls.__doc__:  # the standard library would run `inspect.signature` (≈ 1 ms) for it
        cls.__doc__ = f"{cls.__name__}({', '.join(body.get('__annotations__', {}))})"
    made = dataclasses.dataclass(cls, init=False, repr=False, eq=False, frozen=False,
                                 match_args=match_args, slots=slots)
    flds = dataclasses.fields(made)  # type: ignore[arg-type]
    _check_defaults_order(made, flds)
    setattr(made, _FROZEN, frozen)
    if "__init__" not in explicit:
        _install(made, "__init__", _lazy_init(made, flds, frozen, slots))
    if "__repr__" not in explicit:
        _install(made, "__repr__", _repr_fn(tuple(f.name for f in flds if f.repr)))
    if eq:
        compare = _getter(tuple(f.name for f in flds if f.compare))
        if "__eq__" not in explicit:
            _install(made, "__eq__", _eq_fn(compare))
        if not has_explicit_hash:
            if frozen:
                hashed = _getter(tuple(f.name for f in flds if (f.compare if f.hash is None else f.hash)))
                _install(made, "__hash__", _hash_fn(hashed))
            else:
                made.__hash__ = None  # type: ignore[assignment]  # mutable and comparable: unhashable
    if frozen:
        names = frozenset(f.name for f in flds)
        _install(made, "__setattr__", _frozen_setattr(made, names))
        _install(made, "__delattr__", _frozen_delattr(made, names))
        if slots:  # copy and pickle restore a slotted instance through setattr otherwise
            _install(made, "__getstate__", _getstate_fn(tuple(f.name for f in flds)))
            _install(made, "__setstate__", _setstate_fn(tuple(f.name for f in flds)))
    return made


def _check_defaults_order(cls: type, flds: tuple[Field[Any], ...]) -> None:
    """The standard library's definition-time error, without compiling anything."""
    seen_default = False
    for f in flds:
        if not f.init:
            continue
        if f.default is MISSING and f.default_factory is MISSING:
            if seen_default:
                raise TypeError(f"non-default argument {f.name!r} follows default argument")
        else:
            seen_default = True


def _install(cls: type, name: str, fn: Callable[..., Any]) -> None:
    fn.__name__ = name
    fn.__qualname__ = f"{cls.__qualname__}.{name}"
    type.__setattr__(cls, name, fn)


#: Instantiations a class gets through the shared `__init__` before its own is compiled
#: (module docstring); 0 compiles on the first.
COMPILE_AFTER = 8


class _Binder:
    """What the shared `__init__` knows about a class's fields, worked out on first use."""

    __slots__ = ("n_init", "index", "required", "steps", "set", "post_init")

    def __init__(self, cls: type, flds: tuple[Field[Any], ...], frozen: bool, slots: bool) -> None:
        init = [f for f in flds if f.init]
        self.n_init = len(init)
        self.index = {f.name: i for i, f in enumerate(init)}
        self.required = tuple((i, f.name) for i, f in enumerate(init)
                              if f.default is MISSING and f.default_factory is MISSING)
        #: (name, argument position or -1, default, default factory), in field order; the
        #: fields `_compile_init` leaves to their class attribute are left out here too
        self.steps: list[tuple[str, int, Any, Any]] = []
        for f in flds:
            if f.init or f.default_factory is not MISSING or (slots and f.default is not MISSING):
                self.steps.append((f.name, self.index[f.name] if f.init else -1, f.default,
                                   f.default_factory))
        self.set: Callable[[Any, str, Any], None] = object.__setattr__ if frozen else setattr
        self.post_init = hasattr(cls, "__post_init__")

    def bind(self, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Initialise `obj` as the compiled `__init__` would; False (and `obj` untouched) for
        any call that the compiled one would refuse."""
        n = len(args)
        if n > self.n_init:
            return False
        index = self.index
        for name in kwargs:
            if index.get(name, -1) < n:  # unknown, or given positionally as well
                return False
        for i, name in self.required:
            if i >= n and name not in kwargs:
                return False
        values = []
        for name, i, default, factory in self.steps:
            if 0 <= i < n:
                values.append(args[i])
            elif i >= 0 and name in kwargs:
                values.append(kwargs[name])
            else:
                values.append(default if factory is MISSING else factory())
        set_ = self.set
        for (name, *_), value in zip(self.steps, values, strict=True):
            set_(obj, name, value)
        if self.post_init:
            obj.__post_init__()
        return True


def _lazy_init(cls: type, flds: tuple[Field[Any], ...], frozen: bool, slots: bool) -> Callable[..., None]:
    """An `__init__` that binds through `_Binder` for the class's first `COMPILE_AFTER`
    instantiations, then compiles the real one for `cls`, installs it and runs it."""
    binder: _Binder | None = None
    made = 0

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal binder, made
        real = cls.__dict__["__init__"]
        if real is __init__:
            made += 1  # a lost increment under threads only compiles a little later
            if made <= COMPILE_AFTER:
                if binder is None:
                    binder = _Binder(cls, flds, frozen, slots)
                if binder.bind(self, args, kwargs):
                    return
            with _compile_lock:
                real = cls.__dict__["__init__"]
                if real is __init__:
                    real = _compile_init(cls, flds, frozen, slots)
                    _install(cls, "__init__", real)
        real(self, *args, **kwargs)

    return __init__


def _compile_init(cls: type, flds: tuple[Field[Any], ...], frozen: bool, slots: bool) -> Callable[..., None]:
    """The `__init__` the standard library would generate for these fields (no annotations)."""
    env: dict[str, Any] = {"__HAS_FACTORY": _HAS_FACTORY, "__object_setattr": object.__setattr__}
    params, lines = [], []
    for f in flds:
        dflt = f"__dflt_{f.name}"
        if f.default_factory is not MISSING:
            env[dflt] = f.default_factory
            if f.init:
                params.append(f"{f.name}=__HAS_FACTORY")
                value = f"{dflt}() if {f.name} is __HAS_FACTORY else {f.name}"
            else:
                value = f"{dflt}()"
        elif f.init:
            if f.default is not MISSING:
                env[dflt] = f.default
                params.append(f"{f.name}={dflt}")
            else:
                params.append(f.name)
            value = f.name
        elif slots and f.default is not MISSING:
            env[dflt] = f.default
            value = dflt
        else:
            continue  # read from the class attribute holding the default
        if frozen:
            lines.append(f"__object_setattr(self, {f.name!r}, {value})")
        else:
            lines.append(f"self.{f.name} = {value}")
    if hasattr(cls, "__post_init__"):
        lines.append("self.__post_init__()")
    src = f"def __init__(self, {', '.join(params)}):\n " + "\n ".join(lines or ["pass"]) + "\n"
    exec(src, env)  # noqa: S102 - source built above from the class's own field names
    fn: Callable[..., None] = env["__init__"]
    return fn


def _getter(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A function returning the named attributes as a tuple, as the generated methods compare."""
    if len(names) > 1:
        return attrgetter(*names)
    if names:
        one = attrgetter(names[0])
        return lambda obj: (one(obj),)
    return lambda obj: ()


def _repr_fn(names: tuple[str, ...]) -> Callable[[Any], str]:
    @reprlib.recursive_repr()
    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        return f"{self.__class__.__qualname__}({inner})"

    return __repr__


def _eq_fn(values: Callable[[Any], tuple[Any, ...]]) -> Callable[[Any, Any], Any]:
    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is self.__class__:
            return values(self) == values(other)
        return NotImplemented

    return __eq__


def _hash_fn(values: Callable[[Any], tuple[Any, ...]]) -> Callable[[Any], int]:
    def __hash__(self: Any) -> int:
        return hash(values(self))

    return __hash__


def _frozen_setattr(cls: type[Any], names: frozenset[str]) -> Callable[[Any, str, Any], None]:
    def __setattr__(self: Any, name: str, value: Any) -> None:
        if type(self) is cls or name in names:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")
        super(cls, self).__setattr__(name, value)

    return __setattr__


def _frozen_delattr(cls: type[Any], names: frozenset[str]) -> Callable[[Any, str], None]:
    def __delattr__(self: Any, name: str) -> None:
        if type(self) is cls or name in names:
            raise FrozenInstanceError(f"cannot delete field {name!r}")
        super(cls, self).__delattr__(name)

    return __delattr__


def _getstate_fn(names: tuple[str, ...]) -> Callable[[Any], list[Any]]:
    def __getstate__(self: Any) -> list[Any]:
        return [getattr(self, n) for n in names]

    return __getstate__


def _setstate_fn(names: tuple[str, ...]) -> Callable[[Any, list[Any]], None]:
    def __setstate__(self: Any, state: list[Any]) -> None:
        for n, v in zip(names, state, strict=True):
            object.__setattr__(self, n, v)

    return __setstate__
