// graphql-codegen (`typescript` plugin) over an SDL file with the scalar mapping README.md
// gives frontends: `node codegen.mjs <schema.graphql> <out.ts>`. strictScalars makes a custom
// scalar without a mapping an error instead of an `unknown` type.
import { generate } from "@graphql-codegen/cli";

const [schema, output] = process.argv.slice(2);
await generate(
  {
    schema,
    generates: {
      [output]: {
        plugins: ["typescript"],
        config: {
          scalars: {
            Decimal: { input: "string", output: "string" },
            DateTime: { input: "string", output: "string" },
            // Federation's entity representations, in the subgraph's own schema only.
            _Any: { input: "Record<string, unknown>", output: "Record<string, unknown>" },
          },
          strictScalars: true,
        },
      },
    },
    silent: true,
  },
  true,
);
console.log(`GENERATED ${output}`);
