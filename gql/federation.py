"""Apollo Federation v2: the subgraph schema base whose `_entities` checks each representation
before handing it to the entity's `resolve_reference` (which goes through the loaders)."""

from strawberry.federation import Schema as FederationSchema
from strawberry.federation.schema import FederationAny
from strawberry.types import Info

from gql.errors import BadUserInput

# The key every entity of this subgraph is fetched by: its Relay global ID.
ENTITY_KEY = "id"


class SubgraphSchema(FederationSchema):
    def entities_resolver(
        self, info: Info, representations: list[FederationAny]
    ) -> list[FederationAny]:
        """Strawberry's resolver, after turning malformed representations into BAD_USER_INPUT
        errors of their own list item (strawberry would fail on them with a KeyError or a
        TypeError, which clients would see as an internal error)."""
        problems = [self._problem_of(representation) for representation in representations]
        valid = [rep for rep, problem in zip(representations, problems, strict=True) if not problem]
        resolved = iter(super().entities_resolver(info, valid))
        return [
            FederationAny(BadUserInput(problem)) if problem else next(resolved)
            for problem in problems
        ]

    def _problem_of(self, representation: object) -> str | None:
        """What is wrong with one representation, or None if it can be resolved."""
        if not isinstance(representation, dict):
            return "an entity representation must be an object"
        type_name = representation.get("__typename")
        type_map = self.schema_converter.type_map
        entity = type_map.get(type_name) if isinstance(type_name, str) else None
        origin = getattr(getattr(entity, "definition", None), "origin", None)
        if origin is None or not hasattr(origin, "resolve_reference"):
            return f"{type_name!r} is not an entity type of this subgraph"
        if set(representation) != {"__typename", ENTITY_KEY}:
            return f"a {type_name} representation takes exactly `__typename` and `id`"
        if not isinstance(representation[ENTITY_KEY], str):
            return f"the `id` of a {type_name} representation must be a string"
        return None
