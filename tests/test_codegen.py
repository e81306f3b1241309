"""graphql-codegen (tests/codegen, pinned npm packages) over the committed `schema.graphql`
with the scalar mapping README.md gives frontends: every scalar gets a real type (no `unknown`,
no `any`), and `strictScalars` would fail the run on a custom scalar without a mapping."""

import re
import subprocess
from pathlib import Path

import pytest

from gql.schema.export import SCHEMA_FILE
from tests.live import npm_ci, require_node

CODEGEN_DIR = Path(__file__).resolve().parent / "codegen"
README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="session")
def codegen_packages() -> Path:
    require_node()
    npm_ci(CODEGEN_DIR)
    return CODEGEN_DIR


def test_codegen_types_every_scalar_of_the_schema(codegen_packages: Path, tmp_path: Path) -> None:
    output = tmp_path / "types.ts"
    result = subprocess.run(
        ["node", "codegen.mjs", str(SCHEMA_FILE), str(output)],
        cwd=codegen_packages,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    generated = output.read_text(encoding="utf-8")
    block = re.search(r"export type Scalars = \{\n(.*?)\n\};", generated, re.S)
    assert block is not None, generated[:2000]
    scalars = dict(re.findall(r"^\s*(\w+): (\{.*\})$", block.group(1), re.M))
    assert scalars["Decimal"] == "{ input: string; output: string; }"
    assert scalars["DateTime"] == "{ input: string; output: string; }"
    for name, mapped in scalars.items():
        assert not re.search(r"\b(unknown|any)\b", mapped.replace("Record<string, unknown>", "")), (
            name,
            mapped,
        )


def test_readme_gives_the_mapping_the_codegen_run_uses(codegen_packages: Path) -> None:
    readme = README.read_text(encoding="utf-8")
    config = (codegen_packages / "codegen.mjs").read_text(encoding="utf-8")
    for line in (
        'Decimal: { input: "string", output: "string" }',
        'DateTime: { input: "string", output: "string" }',
        "strictScalars: true",
    ):
        assert line in readme and line in config, line
