"""sifbox.util.records.record behaves as collections.namedtuple where sifbox uses it."""

from __future__ import annotations

import pickle
from collections import namedtuple

import pytest

from sifbox.util.records import record

Point = record("Point", "x y z", defaults=(0,))
Reference = namedtuple("Reference", "x y z", defaults=(0,))


def test_same_behaviour_as_namedtuple() -> None:
    for args, kwargs in (((1, 2), {}), ((1, 2, 3), {}), ((1,), {"y": 5}), ((), {"x": 1, "y": 2, "z": 3})):
        p, r = Point(*args, **kwargs), Reference(*args, **kwargs)
        assert tuple(p) == tuple(r) and (p.x, p.y, p.z) == (r.x, r.y, r.z)
        assert p == tuple(r) and hash(p) == hash(tuple(r))
        assert p._replace(y=9) == r._replace(y=9)
        assert p._asdict() == r._asdict()
        assert repr(p) == repr(r).replace("Reference", "Point")
    assert Point._fields == Reference._fields
    assert Point._field_defaults == Reference._field_defaults


def test_errors() -> None:
    for bad in (lambda: Point(1), lambda: Point(1, 2, 3, 4), lambda: Point(1, 2, w=1),
                lambda: Point(1, 2, x=1), lambda: Point(1, 2)._replace(w=1)):  # fmt: skip
        with pytest.raises(TypeError):
            bad()
    with pytest.raises(AttributeError):
        Point(1, 2).x = 3  # type: ignore[misc]


def test_subclass_and_pickle() -> None:
    class Named(Point):  # type: ignore[misc, valid-type]
        __slots__ = ()

        def norm(self) -> int:
            return int(self.x + self.y + self.z)

    assert Named(1, 2, 3).norm() == 6 and isinstance(Named(1, 2)._replace(x=5), Named)
    assert pickle.loads(pickle.dumps(Point(1, 2))) == Point(1, 2)
