// Hive Gateway over the subgraphs named in SUBGRAPHS ([{"name", "url"}]): each subgraph's SDL
// read from `_service { sdl }`, composed with The Guild's composer
// (@theguild/federation-composition, as Hive Gateway and Hive's schema registry compose), and
// served by Hive Gateway's runtime, which forwards the client's Authorization header to every
// subgraph. Prints "READY <url>" once it serves, or "COMPOSITION FAILED: …" and exits 1.
import { createServer } from "node:http";
import { createGatewayRuntime } from "@graphql-hive/gateway";
import { composeServices } from "@theguild/federation-composition";
import { parse } from "graphql";

const services = [];
for (const { name, url } of JSON.parse(process.env.SUBGRAPHS)) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ query: "{ _service { sdl } }" }),
  });
  const { data } = await response.json();
  services.push({ name, url, typeDefs: parse(data._service.sdl) });
}
const composed = composeServices(services);
if (composed.errors) {
  console.log(`COMPOSITION FAILED: ${composed.errors.map((error) => error.message).join("; ")}`);
  process.exit(1);
}

const gateway = createGatewayRuntime({
  supergraph: composed.supergraphSdl,
  propagateHeaders: {
    fromClientToSubgraphs: ({ request }) => ({ authorization: request.headers.get("authorization") }),
  },
});
const server = createServer(gateway);
server.listen(0, "127.0.0.1", () => {
  console.log(`READY http://127.0.0.1:${server.address().port}/graphql`);
});
