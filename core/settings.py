"""Service settings, read once from the environment (and an optional `.env` file)."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Every tunable of the service. Names map to upper-case environment variables."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    log_level: str = "INFO"

    # Database. Without DATABASE_URL the embedded PostgreSQL (pgserver) in DATA_DIR is used.
    database_url: str | None = None
    data_dir: Path = PROJECT_ROOT / ".data"
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    db_pool_timeout: float = Field(default=10.0, gt=0)
    db_pool_recycle: int = Field(default=1800, ge=-1)
    db_statement_cache_size: int = Field(default=500, ge=0)

    # Redis (rate limits, persisted queries). Optional for a single local process.
    redis_url: str | None = None

    # HTTP serving.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    # Production serving under gunicorn (gunicorn.conf.py). WEB_CONCURRENCY unset: from the
    # CPU count. BIND unset: HOST:PORT.
    web_concurrency: int | None = Field(default=None, ge=1)
    bind: str | None = None
    worker_timeout: int = Field(default=30, ge=0)
    graceful_timeout: int = Field(default=30, ge=0)
    keepalive: int = Field(default=5, ge=0)
    max_requests: int = Field(default=10_000, ge=0)
    max_requests_jitter: int = Field(default=1_000, ge=0)
    access_log: bool = True

    # API shape.
    max_page_size: int = Field(default=100, ge=1)
    default_page_size: int = Field(default=20, ge=1)

    # Demo data seeded into an empty database by `make run`.
    seed_users: int = Field(default=50, ge=1)
    seed_products: int = Field(default=500, ge=1)
    seed_orders: int = Field(default=2000, ge=0)
    seed: int = 42

    @property
    def is_production(self) -> bool:
        return self.environment == "production"


@lru_cache
def get_settings() -> Settings:
    return Settings()
