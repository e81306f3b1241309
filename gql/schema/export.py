"""`make schema`: write the schema's SDL to `schema.graphql`, the contract that frontends
generate clients from and that tests/test_schema_contract.py holds the code to."""

import sys
from pathlib import Path

from core.settings import PROJECT_ROOT
from gql.schema.build import schema

SCHEMA_FILE = PROJECT_ROOT / "schema.graphql"


def schema_sdl() -> str:
    """The SDL as committed: Strawberry's printout (federation directives included)."""

    return schema.as_str() + "\n"


def main(argv: list[str]) -> None:
    path = Path(argv[0]) if argv else SCHEMA_FILE
    path.write_text(schema_sdl(), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
