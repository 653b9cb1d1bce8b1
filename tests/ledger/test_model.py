"""The fast constructors of the value objects build exactly what the dataclass constructors
build: same type, same fields, equal and equally hashed, still frozen; and they take exactly the
class's fields, in order (a field added to a class must reach its builder)."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from ledger import (
    Committed,
    CreditCheck,
    Idempotency,
    IdempotencyRecord,
    Transfer,
    Transferred,
    frozen_builder,
    new_committed,
    new_idempotency,
    new_idempotency_record,
    new_transfer,
    new_transferred,
)
from ledger._decide import _new_credit_check

BUILDERS = [
    (new_transferred, Transferred), (new_committed, Committed), (new_idempotency_record, IdempotencyRecord),
    (new_transfer, Transfer), (new_idempotency, Idempotency), (_new_credit_check, CreditCheck),
]
values = st.one_of(st.none(), st.integers(), st.text(max_size=5), st.binary(max_size=3), st.tuples(st.integers()))


@pytest.mark.parametrize(("build", "cls"), BUILDERS, ids=[cls.__name__ for _, cls in BUILDERS])
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_a_builder_makes_what_the_class_makes(build: Any, cls: type, data: st.DataObject) -> None:
    names = [field.name for field in dataclasses.fields(cls)]
    parameters = [p.name for p in inspect.signature(build).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert parameters == names
    arguments = [data.draw(values, label=name) for name in names]
    try:
        expected = cls(**dict(zip(names, arguments, strict=True)))
    except TypeError:
        # A class compiled by mypyc (ADR 0012) checks its fields' types; the builder must then
        # refuse the same values (the pure build never gets here).
        with pytest.raises(TypeError):
            build(*arguments)
        return
    built = build(*arguments)
    assert type(built) is cls
    assert [getattr(built, name) for name in names] == arguments
    assert [getattr(expected, name) for name in names] == arguments
    if cls.__dataclass_params__.eq:  # type: ignore[attr-defined]
        # (``Committed`` and ``IdempotencyRecord`` compare their outcomes, built from fields
        # that random values do not make valid: the field comparison above is the check.)
        assert built == expected
        try:
            assert hash(built) == hash(expected)
        except TypeError:  # an unhashable field value: both refuse alike
            with pytest.raises(TypeError):
                hash(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(built, names[0], None)


def test_a_builder_refuses_what_it_cannot_build_faithfully() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        value: int

        def __post_init__(self) -> None:
            assert self.value >= 0

    with pytest.raises(AssertionError):
        frozen_builder(Checked)
