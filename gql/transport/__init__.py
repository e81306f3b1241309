"""The HTTP and ASGI edge: the GraphQL endpoint (the one pipeline), its middleware,
authentication, rate limits, persisted queries, health, metrics, GraphiQL and the gunicorn
worker."""
