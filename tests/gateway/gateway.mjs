// An Apollo Gateway composing the subgraphs named in SUBGRAPHS ([{"name", "url"}]) with
// IntrospectAndCompose (each subgraph's `_service { sdl }`), forwarding the client's
// Authorization header to every subgraph. Prints "READY <url>" once it serves.
import { ApolloGateway, IntrospectAndCompose, RemoteGraphQLDataSource } from "@apollo/gateway";
import { ApolloServer } from "@apollo/server";
import { startStandaloneServer } from "@apollo/server/standalone";

const gateway = new ApolloGateway({
  supergraphSdl: new IntrospectAndCompose({ subgraphs: JSON.parse(process.env.SUBGRAPHS) }),
  buildService: ({ url }) =>
    new RemoteGraphQLDataSource({
      url,
      willSendRequest({ request, context }) {
        if (context.authorization) {
          request.http.headers.set("authorization", context.authorization);
        }
      },
    }),
});

const server = new ApolloServer({ gateway });
const { url } = await startStandaloneServer(server, {
  listen: { host: "127.0.0.1", port: 0 },
  context: async ({ req }) => ({ authorization: req.headers.authorization }),
});
console.log(`READY ${url}`);
