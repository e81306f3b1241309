"""The GraphQL schema: types, queries, mutations, federation, the per-request context and its
DataLoaders."""
