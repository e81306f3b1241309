"""The GraphQL and HTTP edge: translates requests into service calls and results into types."""
