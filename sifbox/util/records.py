"""`record`: immutable records (tuples with named fields), as `collections.namedtuple`
makes them, without importing `collections` (with its `keyword`, `reprlib`, `heapq`...)
and without compiling code at class creation: about 3 ms of every container launch,
which counts once per MPI rank.

    Mount = record("Mount", "kind source target readonly", defaults=(False,))
    m = Mount("bind", "/a", "/b")          # m.readonly is False
    m._replace(readonly=True)              # a new record
"""

from __future__ import annotations

import sys
from _operator import itemgetter  # the C module: `operator` itself is a Python module to load


def record(typename: str, field_names: str | tuple[str, ...], *, defaults: tuple[object, ...] = ()):  # type: ignore[no-untyped-def]
    fields = tuple(field_names.replace(",", " ").split()) if isinstance(field_names, str) else tuple(field_names)
    if len(defaults) > len(fields):
        raise TypeError("more defaults than fields")
    count = len(fields)
    index = {name: i for i, name in enumerate(fields)}
    first_default = count - len(defaults)

    def __new__(cls, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not kwargs and first_default <= len(args) <= count:  # the common case, made fast
            return tuple.__new__(cls, args + defaults[len(args) - first_default:] if len(args) < count else args)
        if len(args) > count:
            raise TypeError(f"{typename}() takes {count} arguments but {len(args)} were given")
        values = list(args)
        for i in range(len(args), count):
            name = fields[i]
            if name in kwargs:
                values.append(kwargs.pop(name))
            elif i >= first_default:
                values.append(defaults[i - first_default])
            else:
                raise TypeError(f"{typename}() missing required argument: '{name}'")
        if kwargs:
            extra = next(iter(kwargs))
            what = "multiple values for" if extra in index else "an unexpected keyword"
            raise TypeError(f"{typename}() got {what} argument '{extra}'")
        return tuple.__new__(cls, values)

    def _replace(self, **kwargs):  # type: ignore[no-untyped-def]
        values = list(self)
        for name, value in kwargs.items():
            if name not in index:
                raise TypeError(f"{typename}._replace() got an unexpected field '{name}'")
            values[index[name]] = value
        return tuple.__new__(type(self), values)

    def __repr__(self) -> str:  # type: ignore[no-untyped-def]
        inner = ", ".join(f"{name}={value!r}" for name, value in zip(fields, self))
        return f"{type(self).__name__}({inner})"

    def _asdict(self) -> dict[str, object]:  # type: ignore[no-untyped-def]
        return dict(zip(fields, self))

    def __getnewargs__(self) -> tuple[object, ...]:  # type: ignore[no-untyped-def]
        return tuple(self)

    namespace: dict[str, object] = {
        "__slots__": (),
        "__doc__": f"{typename}({', '.join(fields)})",
        "_fields": fields,
        "_field_defaults": dict(zip(fields[first_default:], defaults)),
        "__new__": __new__,
        "_replace": _replace,
        "__repr__": __repr__,
        "_asdict": _asdict,
        "__getnewargs__": __getnewargs__,
        "__match_args__": fields,
    }
    for i, name in enumerate(fields):
        namespace[name] = property(itemgetter(i), doc=f"field {i}: {name}")
    cls = type(typename, (tuple,), namespace)
    try:  # where the class is defined, so that pickle finds it
        cls.__module__ = sys._getframe(1).f_globals.get("__name__", "__main__")
    except (AttributeError, ValueError):
        pass
    return cls
