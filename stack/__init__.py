"""`make stack`: the deployment on one machine (PostgreSQL, PgBouncer, Redis, N service
instances, the outbox worker, HAProxy in front), started together and stopped together."""
