"""The answers' JSON: an optional field appears only once set, and the parts without optional fields skip the hook."""

import json

import pytest
from pydantic import Field

from lm.answers import Answer, FixedAnswer, UnitInfluence, to_json


class _Part(Answer):
    name: str
    note: str | None = Field(None)
    count: int = 0


def test_an_optional_field_appears_only_once_set():
    assert json.loads(to_json(_Part(name="a"))) == {"name": "a", "count": 0}
    assert json.loads(to_json(_Part(name="a", note=None))) == {"name": "a", "note": None, "count": 0}
    assert json.loads(to_json(_Part(name="a", note="n", count=2))) == {"name": "a", "note": "n", "count": 2}


def test_a_fixed_part_with_an_optional_field_is_refused():
    with pytest.raises(TypeError, match="optional fields \\['note'\\]"):
        class _Wrong(FixedAnswer):  # noqa: F841
            note: str | None = None


def test_a_fixed_part_serialises_every_field():
    unit = UnitInfluence(text="▁the", start=0, end=3, score=0.5, word=0)
    assert json.loads(to_json(unit)) == {"text": "▁the", "start": 0, "end": 3, "score": 0.5, "word": 0}
