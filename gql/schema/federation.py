"""Apollo Federation v2: the subgraph schema base whose `_entities` is costed like any list
and checks each representation before handing it to the entity's `resolve_reference` (which
goes through the loaders)."""

from strawberry.federation import Schema as FederationSchema
from strawberry.federation.schema import FederationAny
from strawberry.types import Info

from core.settings import get_settings
from gql.engine.internals import graphql_schema_of
from gql.engine.query_limits import entities_cost, query_limits_of
from gql.errors import QUERY_TOO_COMPLEX, ApiError, BadUserInput

# The key every entity of this subgraph is fetched by: its Relay global ID.
ENTITY_KEY = "id"


class EntitiesTooComplex(ApiError):
    code = QUERY_TOO_COMPLEX


class SubgraphSchema(FederationSchema):
    def entities_resolver(
        self, info: Info, representations: list[FederationAny]
    ) -> list[FederationAny]:
        """Strawberry's resolver, after the cost check (`_check_cost`) and after turning
        malformed representations into BAD_USER_INPUT errors of their own list item
        (strawberry would fail on them with a KeyError or a TypeError, which clients would
        see as an internal error)."""
        self._check_cost(info, representations)
        problems = [self._problem_of(representation) for representation in representations]
        valid = [rep for rep, problem in zip(representations, problems, strict=True) if not problem]
        resolved = iter(super().entities_resolver(info, valid))
        return [
            FederationAny(BadUserInput(problem)) if problem else next(resolved)
            for problem in problems
        ]

    def _check_cost(self, info: Info, representations: list[FederationAny]) -> None:
        """Refuse (QUERY_TOO_COMPLEX) before anything is loaded when the representations of
        the operation cost more than MAX_QUERY_COST: `_entities` is a list whose length only
        the request's values tell (representations come as a variable, and validation is
        cached per document), so it is costed here, in the resolver, which runs the same
        whether the document is new or known. Root resolvers of a query all run before any of
        their loads starts (`resolve_reference` is a coroutine the executor awaits later),
        so a refusal of a second `_entities` (aliases) still comes before any statement."""
        context = info.context
        settings = getattr(context, "settings", None) or get_settings()
        limits = query_limits_of(settings)
        type_names = [
            name if isinstance(name, str) else None
            for name in (
                rep.get("__typename") if isinstance(rep, dict) else None for rep in representations
            )
        ]
        cost = entities_cost(graphql_schema_of(self), info.selected_fields, type_names, limits)
        # Per operation: a batch of operations shares one context. Without our context (direct
        # `schema.execute` calls), this field alone.
        by_operation: dict[int, int] = getattr(context, "entities_cost_spent", {})
        spent = by_operation.get(id(info.operation), 0) + cost
        if spent > limits.max_cost:
            raise EntitiesTooComplex(
                f"{len(representations)} entity representations with an estimated cost of "
                f"{cost}"
                + (f" ({spent} with this operation's other `_entities`)" if spent > cost else "")
                + f"; the maximum is {limits.max_cost} (each representation costs 1 plus its "
                "selection on its type): fetch them in smaller batches"
            )
        by_operation[id(info.operation)] = spent

    def _problem_of(self, representation: object) -> str | None:
        """What is wrong with one representation, or None if it can be resolved."""
        if not isinstance(representation, dict):
            return "an entity representation must be an object"
        type_name = representation.get("__typename")
        definition = self.get_type_by_name(type_name) if isinstance(type_name, str) else None
        origin = getattr(definition, "origin", None)
        if origin is None or not hasattr(origin, "resolve_reference"):
            return f"{type_name!r} is not an entity type of this subgraph"
        if set(representation) != {"__typename", ENTITY_KEY}:
            return f"a {type_name} representation takes exactly `__typename` and `id`"
        if not isinstance(representation[ENTITY_KEY], str):
            return f"the `id` of a {type_name} representation must be a string"
        return None
