"""Persistence: models, engine and sessions, migrations, the embedded database, seed data."""
