"""The sink's JSON lines (stages/pipeline/jsonl.py): the values canonical_json gives, 7-bit, and
the same refusals - whichever encoder wrote the line."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import math
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockstore import canonical_json
from stages import FileSink
from stages.pipeline.jsonl import encode_jsonl, record_line

_scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
            | st.floats(allow_nan=True, allow_infinity=True) | st.text())
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=20)


def _same_value(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@settings(max_examples=400, deadline=None)
@given(_values)
def test_every_line_reads_back_as_canonical_json_reads(value: object) -> None:
    line = record_line(value)
    assert line.isascii() and b"\n" not in line
    assert _same_value(json.loads(line), json.loads(canonical_json(value)))


def test_values_orjson_would_change_take_the_slow_encoder() -> None:
    # NaN and infinities (orjson: null), non-ASCII text (orjson: raw UTF-8), integer keys
    # and integers past 64 bits (orjson refuses): exactly canonical_json's bytes
    for value in ({"x": float("nan")}, {"x": -math.inf}, {"k": "d\u00e9j\u00e0"},
                  {1: "a", 2: "b"}, {"big": 2**70}, ["\ud800"]):
        assert record_line(value) == canonical_json(value), value


def test_values_json_refuses_are_refused_with_either_encoder() -> None:
    @dataclasses.dataclass
    class Point:
        x: int

    for value in ({"p": Point(1)}, {"d": datetime.date(2026, 12, 7)}, {"s": {1, 2}},
                  {"b": b"raw"}, {"p": Point(1), "n": None}, {"d": datetime.date.today(),
                                                            "t": "\u00e9"}):
        with pytest.raises(TypeError):
            record_line(value)


def test_enums_and_uuids_encode_the_same_whichever_encoder_runs() -> None:
    class Colour(enum.Enum):
        RED = "red"

    class Status(str, enum.Enum):  # a mixin whose content is not its value (review 37)
        ACTIVE = "A"

        def __new__(cls, value: str) -> "Status":
            member = str.__new__(cls, "Active")
            member._value_ = value
            return member

    class Level(int, enum.Enum):
        HIGH = 3

        def __new__(cls, value: int) -> "Level":
            member = int.__new__(cls, 3)
            member._value_ = "high"
            return member

    u = uuid.UUID(int=7)
    fast = record_line({"c": Colour.RED, "u": u, "s": Status.ACTIVE, "l": [Level.HIGH]})
    slow = record_line({"c": Colour.RED, "u": u, "s": Status.ACTIVE, "l": [Level.HIGH],
                        "n": None})  # null: the slow encoder
    want = {"c": "red", "u": str(u), "s": "A", "l": ["high"]}
    assert json.loads(fast) == want
    assert json.loads(slow) == {**want, "n": None}


def test_a_fragment_that_would_split_the_line_is_refused() -> None:
    orjson = pytest.importorskip("orjson")
    with pytest.raises(TypeError):
        record_line({"f": orjson.Fragment(b'1}\n{"i":99')})
    with pytest.raises(TypeError):
        record_line({"f": orjson.Fragment(b'1}\r{"i":99')})
    assert record_line({"f": orjson.Fragment(b"[1,2]")}) == b'{"f":[1,2]}'


def test_a_circular_record_is_a_value_error_with_either_encoder() -> None:
    a: list[object] = []
    a.append(a)
    for value in ({"a": a}, {"a": a, "n": None}):
        with pytest.raises(ValueError):
            record_line(value)


def test_a_file_sink_step_reads_back_the_records(tmp_path) -> None:
    records = [{"i": i, "key": f"k{i % 3}", "v": i / 7, "tag": None if i % 2 else "\u00e9"}
               for i in range(50)]
    sink = FileSink(tmp_path / "out", fsync=False)
    sink.commit(1, records)
    assert sink.read_step(1) == records
    assert encode_jsonl(records).count(b"\n") == 50
