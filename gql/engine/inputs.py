"""Input objects built from their GraphQL values by plans made once per type.

Strawberry turns an argument's input value into its input class field by field, and for each
field, on every request, resolves the field's annotation and asks the name converter for its
GraphQL name: 13% of a served `createOrder`'s CPU went there (docs/execution.md). Each input
type's definition offers a public hook for building its own value, `from_input` (Strawberry's
`StrawberryObjectDefinition`, the one `strawberry.pydantic` uses); `install_input_builders`
sets it, for the input types of a schema, to a builder that knows those names and types
already.

A builder converts exactly what Strawberry would leave as it is (the built-in scalars, lists
and nulls of them) and its own nested input types; every other field type (enums, custom
scalars) goes to Strawberry's own conversion (`InputContext.convert`), so the result is the
one the default path builds, which tests/test_input_builders.py checks on generated values of
every input type of the schema. A type with a `Maybe` field keeps the default path: Strawberry
checks the nulls of those in the document only for types without the hook."""

import decimal
from collections.abc import Callable, Mapping
from dataclasses import MISSING
from functools import partial
from typing import Any

import strawberry
from strawberry.types.arguments import InputContext
from strawberry.types.base import (
    StrawberryList,
    StrawberryMaybe,
    StrawberryObjectDefinition,
    StrawberryOptional,
)
from strawberry.types.unset import UNSET

# Values of these types come out of graphql-core's coercion as Strawberry's conversion would
# leave them (they are leaves of its default scalar registry).
_UNCHANGED: tuple[object, ...] = (str, int, float, bool, decimal.Decimal, strawberry.ID)

Keys = tuple[str | int, ...]
"""Where a value is in the input being built: GraphQL field names and list indices."""
Convert = Callable[[Any, InputContext, Keys, str | int], Any]
"""A value, from its GraphQL input value at `(*keys, key)` (the location is made only by the
conversions that need it: Strawberry's own, and nested inputs'). None instead of a Convert: the
value is taken as it is."""
Build = Callable[[type, Mapping[str, Any], InputContext, Keys], Any]
"""An input type's value, from its GraphQL input value."""

# The builders installed, by input class, for input fields of those types.
_builders: dict[type, Build] = {}


def install_input_builders(
    definitions: list[StrawberryObjectDefinition], name_of: Callable[[Any], str]
) -> None:
    """Set `from_input` on each of the input types' `definitions` that has none and whose
    fields a builder can convert. `name_of` gives a field's GraphQL name (the schema's name
    converter: `schema.config.name_converter.from_field`)."""
    buildable = {
        d.origin
        for d in definitions
        if d.from_input is None
        and not any(_has_maybe(f.resolve_type(type_definition=d)) for f in d.fields)
    }
    for definition in definitions:
        if definition.origin in buildable:
            _builders[definition.origin] = _builder(definition, name_of, buildable)
    for definition in definitions:
        if definition.origin in buildable:
            definition.from_input = partial(_from_input, _builders[definition.origin])


def _from_input(build: Build, cls: type, value: Mapping[str, Any], context: InputContext) -> Any:
    return build(cls, value, context, ())


def _has_maybe(type_: Any) -> bool:
    """A `Maybe` at any depth: Strawberry converts those in a way of its own."""
    if isinstance(type_, StrawberryMaybe):
        return True
    return isinstance(type_, (StrawberryOptional, StrawberryList)) and _has_maybe(type_.of_type)


def _builder(
    definition: StrawberryObjectDefinition, name_of: Callable[[Any], str], buildable: set[type]
) -> Build:
    """How one input type is built: its fields converted, then the class called as Strawberry
    calls it (absent fields without a default as None, so that the class's own defaults and
    factories apply to the others)."""
    fields = [
        (
            name_of(field),
            field.python_name,
            _converter(field.resolve_type(type_definition=definition), buildable),
        )
        for field in definition.fields
    ]
    implicit_nones = {
        field.python_name: None
        for field in definition.fields
        if field.default_value is MISSING and field.default_factory is MISSING
    }

    def build(cls: type, value: Mapping[str, Any], context: InputContext, keys: Keys) -> Any:
        kwargs = dict(implicit_nones)
        for graphql_name, python_name, convert in fields:
            if graphql_name in value:
                field_value = value[graphql_name]
                kwargs[python_name] = (
                    field_value
                    if convert is None
                    else convert(field_value, context, keys, graphql_name)
                )
        return cls(**kwargs)

    return build


def _converter(type_: Any, buildable: set[type]) -> Convert | None:
    """How to convert a value of `type_`; None: it is taken as it is."""
    if isinstance(type_, StrawberryOptional):
        return _converter(type_.of_type, buildable)  # a null is a null at every level below
    if isinstance(type_, StrawberryList):
        item = _converter(type_.of_type, buildable)
        if item is None:
            # A copy, as Strawberry makes: graphql-core gives every request that omits the
            # value the same default list.
            return lambda value, _context, _keys, _key: (
                value if value is None or value is UNSET else list(value)
            )
        return lambda value, context, keys, key: (
            value
            if value is None or value is UNSET
            else [item(x, context, (*keys, key), index) for index, x in enumerate(value)]
        )
    if type_ in _UNCHANGED:
        return None
    if type_ in buildable:
        nested: type = type_
        return lambda value, context, keys, key: (
            value
            if value is None or value is UNSET
            else _builders[nested](nested, value, context, (*keys, key))
        )
    # Enums, custom scalars, other input types: Strawberry's conversion, as it would run it.
    return lambda value, context, keys, key: context.convert(value, type_, *keys, key)
