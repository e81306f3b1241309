// A tiny second subgraph for the federation test: `reviews`, which extends the booking
// service's Product entity with `reviews` and points back to products from `Review.product`.
// A review may name the order it was written for: `Review.order` makes the gateway fetch that
// Order entity from the booking service, with the caller's token.
// Its data comes from the REVIEWS environment variable: [{"productId", "orderId"?, "body",
// "rating"}].
import { ApolloServer } from "@apollo/server";
import { startStandaloneServer } from "@apollo/server/standalone";
import { buildSubgraphSchema } from "@apollo/subgraph";
import { parse } from "graphql";

const reviews = JSON.parse(process.env.REVIEWS ?? "[]");

const typeDefs = parse(`
  extend schema @link(url: "https://specs.apollo.dev/federation/v2.3", import: ["@key"])

  type Product @key(fields: "id") {
    id: ID!
    reviews: [Review!]!
  }

  type Order @key(fields: "id", resolvable: false) {
    id: ID!
  }

  type Review {
    body: String!
    rating: Int!
    product: Product!
    order: Order
  }

  type Query {
    latestReviews: [Review!]!
  }
`);

const resolvers = {
  Query: {
    latestReviews: () => reviews,
  },
  Product: {
    __resolveReference: (reference) => ({ id: reference.id }),
    reviews: (product) => reviews.filter((review) => review.productId === product.id),
  },
  Review: {
    product: (review) => ({ __typename: "Product", id: review.productId }),
    order: (review) => (review.orderId ? { __typename: "Order", id: review.orderId } : null),
  },
};

const server = new ApolloServer({ schema: buildSubgraphSchema({ typeDefs, resolvers }) });
const { url } = await startStandaloneServer(server, { listen: { host: "127.0.0.1", port: 0 } });
console.log(`READY ${url}`);
