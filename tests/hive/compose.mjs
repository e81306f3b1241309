// The Guild's composer over SDL files: `node compose.mjs name=path.graphql ...`. Prints
// "COMPOSED" and the supergraph's public SDL, or "COMPOSITION FAILED: …" and exits 1.
import { readFileSync } from "node:fs";
import { composeServices } from "@theguild/federation-composition";
import { parse } from "graphql";

const services = process.argv.slice(2).map((argument) => {
  const [name, path] = argument.split("=");
  return { name, url: `http://${name}.invalid/graphql`, typeDefs: parse(readFileSync(path, "utf8")) };
});
const composed = composeServices(services);
if (composed.errors) {
  console.log(`COMPOSITION FAILED: ${composed.errors.map((error) => error.message).join("; ")}`);
  process.exit(1);
}
console.log("COMPOSED");
console.log(composed.publicSdl);
