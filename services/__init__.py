"""The booking domain: use cases, rules and domain exceptions. Knows nothing of HTTP or GraphQL."""
