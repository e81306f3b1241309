"""Input builders (gql/engine/inputs.py) against Strawberry's own conversion: for every input
type of the schema, generated input values, each built twice (the builder's first use and a
later one) with the builder and with Strawberry's default path, must give equal objects of the
same types, all the way down."""

import dataclasses
import random
import string
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from enum import Enum
from typing import Any

import pytest
import strawberry
from strawberry.types.arguments import convert_argument
from strawberry.types.base import (
    StrawberryList,
    StrawberryObjectDefinition,
    StrawberryOptional,
)
from strawberry.types.enum import StrawberryEnumDefinition

from gql.engine.inputs import install_input_builders
from gql.engine.internals import graphql_schema_of, input_definitions
from gql.schema.build import schema
from gql.schema.mutations import CreateOrderInput

DEFINITIONS = input_definitions(graphql_schema_of(schema))
VALUES_PER_TYPE = 150


def convert(value: Any, cls: type) -> Any:
    return convert_argument(
        value, cls, schema.schema_converter.scalar_registry, schema.config, None, path=("input",)
    )


def nested_definitions(definition: StrawberryObjectDefinition) -> list[StrawberryObjectDefinition]:
    """The definition and those of the input types below it, each once."""
    found = {id(definition): definition}
    pending = [definition]
    while pending:
        for field in pending.pop().fields:
            type_ = field.resolve_type()
            while isinstance(type_, (StrawberryOptional, StrawberryList)):
                type_ = type_.of_type
            inner = getattr(type_, "__strawberry_definition__", None)
            if isinstance(inner, StrawberryObjectDefinition) and id(inner) not in found:
                found[id(inner)] = inner
                pending.append(inner)
    return list(found.values())


@contextmanager
def all_default(definition: StrawberryObjectDefinition) -> Iterator[None]:
    saved = [(d, d.from_input) for d in nested_definitions(definition)]
    for d, _ in saved:
        d.from_input = None
    try:
        yield
    finally:
        for d, hook in saved:
            d.from_input = hook


LEAVES: dict[Any, Any] = {
    strawberry.ID: lambda rng: "".join(
        rng.choices(string.ascii_letters + "=:_ ", k=rng.randint(0, 12))
    ),
    int: lambda rng: rng.randint(-(2**31), 2**31 - 1),
    bool: lambda rng: rng.random() < 0.5,
    float: lambda rng: rng.uniform(-1e6, 1e6),
    Decimal: lambda rng: Decimal(rng.randint(-(10**8), 10**8)).scaleb(-rng.randint(0, 4)),
}
LEAVES[str] = LEAVES[strawberry.ID]


def generated(type_: Any, rng: random.Random) -> Any:
    """A value of `type_` as graphql-core hands it over once coerced."""
    if isinstance(type_, StrawberryOptional):
        return None if rng.random() < 0.25 else generated(type_.of_type, rng)
    if isinstance(type_, StrawberryList):
        return [generated(type_.of_type, rng) for _ in range(rng.randint(0, 3))]
    if isinstance(type_, StrawberryEnumDefinition):
        return rng.choice(list(type_.wrapped_cls))
    definition = getattr(type_, "__strawberry_definition__", None)
    if isinstance(definition, StrawberryObjectDefinition):
        return generated_input(definition, rng)
    assert type_ in LEAVES, f"no generator for {type_!r}: extend the test"
    return LEAVES[type_](rng)


def generated_input(definition: StrawberryObjectDefinition, rng: random.Random) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for field in definition.fields:
        type_ = field.resolve_type(type_definition=definition)
        optional = isinstance(type_, StrawberryOptional) or field.default_value is not (
            dataclasses.MISSING
        )
        if optional and rng.random() < 0.3:
            continue  # omitted: graphql-core leaves it out (or fills in a published default)
        value[schema.config.name_converter.from_field(field)] = generated(type_, rng)
    return value


def shape(value: Any) -> Any:
    """Everything that tells two built values apart: types, fields, order of lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (
            type(value),
            {f.name: shape(getattr(value, f.name)) for f in dataclasses.fields(value)},
        )
    if isinstance(value, list):
        return [shape(item) for item in value]
    return (type(value), value)


def test_every_input_type_of_the_schema_has_a_builder() -> None:
    names = {definition.name for definition in DEFINITIONS}
    assert {"CreateOrderInput", "OrderItemInput", "ReserveProductInput", "ProductFilter"} <= names
    assert all(definition.from_input is not None for definition in DEFINITIONS)


@pytest.mark.parametrize("definition", DEFINITIONS, ids=lambda d: d.name)
def test_a_builder_builds_what_strawberry_builds(definition: StrawberryObjectDefinition) -> None:
    rng = random.Random(f"inputs-{definition.name}")
    cls = definition.origin
    for _ in range(VALUES_PER_TYPE):
        value = generated_input(definition, rng)
        with all_default(definition):
            expected = shape(convert(value, cls))
        for _turn in ("first", "again"):
            assert shape(convert(value, cls)) == expected, value


def test_a_builder_copies_lists_as_strawberry_does() -> None:
    """graphql-core hands every request that omits a list the same default list object."""
    shared = ["UHJvZHVjdDox"]
    built = convert(
        {"items": [], "idempotencyKey": "k", "reservationIds": shared}, CreateOrderInput
    )
    assert built.reservation_ids == shared and built.reservation_ids is not shared


def test_strawberry_calls_the_installed_builder() -> None:
    """The hook is what Strawberry's conversion runs (else the comparison above proves
    nothing): a builder that answers something else shows through."""
    definition = CreateOrderInput.__strawberry_definition__
    installed = definition.from_input
    definition.from_input = lambda cls, value, context: ("built by the hook", cls, value)
    try:
        value = {"items": [], "idempotencyKey": "k"}
        assert convert(value, CreateOrderInput) == ("built by the hook", CreateOrderInput, value)
    finally:
        definition.from_input = installed


def test_a_type_with_a_maybe_field_keeps_strawberrys_path() -> None:
    """Strawberry checks the nulls of `Maybe` fields in the document only for types without
    the hook."""

    @strawberry.input
    class Patch:
        name: strawberry.Maybe[str]
        note: str | None = None

    @strawberry.input
    class Plain:
        name: str

    definitions = [Patch.__strawberry_definition__, Plain.__strawberry_definition__]
    install_input_builders(definitions, schema.config.name_converter.from_field)
    assert Patch.__strawberry_definition__.from_input is None
    assert Plain.__strawberry_definition__.from_input is not None


@strawberry.enum
class Colour(Enum):
    RED = "red"
    BLUE = "blue"


@strawberry.input
class Line:
    sku: strawberry.ID
    colour: Colour | None
    amount: Decimal = Decimal("1")


@strawberry.input
class Basket:
    """Cases the schema's own inputs may not have: a nullable field without a default, an
    enum, a factory default, nested lists of inputs."""

    note: str | None
    lines: list[Line] = strawberry.field(default_factory=list)
    groups: list[list[Line] | None] | None = None
    tags: list[str | None] | None = None
    count: int = 3


def test_a_builder_builds_what_strawberry_builds_for_other_shapes() -> None:
    definitions = [Basket.__strawberry_definition__, Line.__strawberry_definition__]
    with all_default(definitions[0]):
        references = []
        rng = random.Random("inputs-basket")
        values = [generated_input(definitions[0], rng) for _ in range(VALUES_PER_TYPE)]
        values += [{}, {"note": None}, {"lines": [{"sku": "a", "colour": None}]}]
        references = [shape(convert(value, Basket)) for value in values]
    install_input_builders(definitions, schema.config.name_converter.from_field)
    assert definitions[0].from_input is not None
    for value, expected in zip(values, references, strict=True):
        assert shape(convert(value, Basket)) == expected, value
