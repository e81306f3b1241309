"""The committed `schema.graphql` is the schema the code serves: frontends generate their
clients from it, so a change to the API shows up in review as a change to that file."""

from gql.schema.export import SCHEMA_FILE, schema_sdl


def test_committed_schema_graphql_matches_the_code() -> None:
    committed = SCHEMA_FILE.read_text(encoding="utf-8") if SCHEMA_FILE.is_file() else ""
    assert committed == schema_sdl(), (
        f"{SCHEMA_FILE.name} differs from the schema in the code: run `make schema` and "
        "commit the result (review the diff: it is the API change clients will see)"
    )
