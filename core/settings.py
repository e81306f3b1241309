"""Service settings, read once from the environment (and an optional `.env` file)."""

import json
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Literal, Self

from limits import parse_many
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Every tunable of the service. Names map to upper-case environment variables."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    log_level: str = "INFO"

    # Database. Without DATABASE_URL the embedded PostgreSQL (pgserver) in DATA_DIR is used.
    database_url: str | None = None
    data_dir: Path = PROJECT_ROOT / ".data"
    # Connections a process keeps. Overflow connections are closed as soon as they are handed
    # back while the pool is full, so under sustained load beyond the pool size requests fork
    # new server backends (measured: 30 a second, p99 four times higher): size the pool for
    # the load and keep overflow for rare bursts.
    db_pool_size: int = Field(default=20, ge=1)
    db_max_overflow: int = Field(default=0, ge=0)
    db_pool_timeout: float = Field(default=10.0, gt=0)
    db_pool_recycle: int = Field(default=1800, ge=-1)
    # Prepared statements kept per connection, in both caches: SQLAlchemy's adapter's (ORM and
    # Core statements) and asyncpg's own (db.compiled's reads run on asyncpg directly).
    db_statement_cache_size: int = Field(default=500, ge=0)
    # Behind PgBouncer in transaction mode (or any pooler that hands a client's statements to
    # whichever server connection is free): no statement cached or named on the server, so
    # DB_STATEMENT_CACHE_SIZE is taken as 0 (db/engine.py, `driver_connect_args`).
    db_pgbouncer: bool = False
    # How PostgreSQL plans the prepared statements (its `plan_cache_mode`): once, generically,
    # by default (db/engine.py, `driver_connect_args`); `auto` is PostgreSQL's own default.
    db_plan_cache_mode: Literal["auto", "force_generic_plan", "force_custom_plan"] = (
        "force_generic_plan"
    )
    # Check each connection on checkout, replacing those the server dropped: free for one
    # the server closed, a ping (one round trip) for one idle at least DB_POOL_PING_AFTER.
    db_pool_pre_ping: bool = True
    db_pool_ping_after: float = Field(default=1.0, ge=0)

    # Redis (rate limits, persisted queries). Optional for a single local process.
    redis_url: str | None = None

    redis_key_prefix: str = "booking"
    # Per Redis command: a stalled Redis must cost a request milliseconds, not seconds.
    redis_timeout: float = Field(default=0.25, gt=0)
    # After a Redis failure, skip Redis for this long (fail open or closed) instead of paying
    # a connection attempt, and a warning, on every request.
    redis_retry_interval: float = Field(default=2.0, ge=0)

    # HTTP serving.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)

    # Browser frontends allowed to call the API cross-origin, e.g.
    # CORS_ORIGINS=https://app.example.com,https://admin.example.com (or a JSON list).
    cors_origins: Annotated[list[str], NoDecode] = []

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

    # How reads complete their objects: "compiled" plans (gql/engine/plans.py), or graphql-core's
    # reference executor, which the compiled one must always agree with (docs/execution.md).
    executor: Literal["compiled", "reference"] = "compiled"

    # API shape.
    max_page_size: int = Field(default=100, ge=1)
    default_page_size: int = Field(default=20, ge=1)

    # The edge: logs, rate limits, query limits, persisted queries (see README "Limits").
    log_json: bool = True
    rate_limit_enabled: bool = True
    rate_limit_default: str = "600/minute"
    rate_limit_fields: dict[str, str] = Field(
        default_factory=lambda: {
            "createOrder": "30/minute",
            "cancelOrder": "30/minute",
            "reserveProduct": "60/minute",
            "releaseReservation": "60/minute",
        }
    )
    rate_limit_fail_open: bool = True
    # The largest share of a limit one process takes from Redis ahead of use, for a caller that
    # keeps coming (0: every request is its own round trip, counted exactly). What it costs in
    # exactness: gql/transport/allowance.py.
    rate_limit_local_share: float = Field(default=0.01, ge=0, le=0.1)
    # Peers whose X-Forwarded-For is believed: comma-separated addresses or networks.
    trusted_proxies: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(
        default_factory=list
    )
    # How long a resolved API token is trusted without asking the database again (0: never):
    # a token or admin flag changed in the database applies within this time.
    auth_cache_seconds: float = Field(default=5.0, ge=0)
    max_request_bytes: int = Field(default=1_000_000, ge=1)
    max_query_depth: int = Field(default=20, ge=1)
    max_query_aliases: int = Field(default=30, ge=0)
    max_query_tokens: int = Field(default=2000, ge=1)
    # Longest query text accepted, refused before it is parsed or cached (caches are keyed by
    # the text, so its size bounds their memory).
    max_query_bytes: int = Field(default=65536, ge=1)
    max_query_cost: int = Field(default=5000, ge=1)
    # Bounds on what validation itself costs, checked before graphql-core's rules run: the
    # selections of an operation with its fragments expanded, and the pairs of selections
    # the spec's merge check (OverlappingFieldsCanBeMerged) compares, a quadratic count.
    max_query_selections: int = Field(default=1000, ge=1)
    max_query_merge_pairs: int = Field(default=1000, ge=0)
    apq_ttl: int = Field(default=86400, ge=1)
    apq_cache_size: int = Field(default=1000, ge=1)
    # Allow-list mode: with a manifest (JSON of sha256 → query), only its queries may run.
    persisted_queries_manifest: Path | None = None
    # `max-age` of an anonymous GET result that reads only public data (the catalogue); 0:
    # every GET result is `private, no-store`.
    http_cache_max_age: int = Field(default=60, ge=0)
    readiness_timeout: float = Field(default=2.0, gt=0)
    # Set (to an empty, writable folder) when several worker processes serve: prometheus-client
    # then keeps its values there and /metrics adds up every worker's.
    prometheus_multiproc_dir: Path | None = None
    metrics_max_operation_names: int = Field(default=200, ge=0)

    # Subscriptions (graphql-transport-ws on /graphql; docs/decisions.md). Events come from
    # PostgreSQL's LISTEN on one connection per process, which a transaction-mode pooler
    # (PgBouncer) cannot carry: EVENTS_DATABASE_URL names the server directly (default:
    # the database's URL).
    events_database_url: str | None = None
    subscriptions_per_connection: int = Field(default=20, ge=1)
    subscriptions_per_process: int = Field(default=10_000, ge=1)
    # Events waiting for one subscription; a subscription that falls further behind is ended
    # (SLOW_CONSUMER) rather than buffered without bound.
    subscription_queue_size: int = Field(default=64, ge=1)
    # Messages a WebSocket connection may send per second (bursts of twice that, plus room to
    # open every subscription at once), beyond which it is closed (4429); each `subscribe`
    # also counts against the caller's rate limit.
    websocket_messages_per_second: float = Field(default=10.0, gt=0)
    websocket_ping_seconds: float = Field(default=15.0, gt=0)
    websocket_init_timeout_seconds: float = Field(default=10.0, gt=0)

    # Writes (mutations). Limits of one order and one hold; attempts of a transaction that hit
    # a deadlock or serialization failure before the client is told anything went wrong.
    max_order_items: int = Field(default=50, ge=1)
    max_item_quantity: int = Field(default=100, ge=1)
    max_idempotency_key_length: int = Field(default=128, ge=1, le=128)
    hold_ttl_min_seconds: int = Field(default=60, ge=1)
    hold_ttl_max_seconds: int = Field(default=3600, ge=1)
    # How long a hold lasts when the client sends no ttlSeconds; within min..max.
    hold_ttl_default_seconds: int = Field(default=900, ge=1)
    db_transaction_attempts: int = Field(default=4, ge=1)
    # A hold the stock allows, or an order from stock alone, first tried as one statement that
    # commits on its own (its row locks last that statement only: one round trip, no ORM
    # session); anything else, and every write when false, runs in a transaction of the ORM.
    # False is the reference the one-statement writes are tested against (docs/decisions.md).
    db_one_statement_writes: bool = True

    # Outbox worker (`python -m services.worker`) and its expired-holds sweeper.
    webhook_url: str | None = None
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    outbox_batch_size: int = Field(default=10, ge=1)
    outbox_max_attempts: int = Field(default=8, ge=1)
    outbox_backoff_base_seconds: float = Field(default=2.0, gt=0)
    outbox_backoff_max_seconds: float = Field(default=3600.0, gt=0)
    outbox_poll_interval_seconds: float = Field(default=1.0, gt=0)
    # A claimed notification is retried after this if its delivery never reports back (worker
    # killed); claimed rows still unsent after half of it are given back. Keep it well above
    # WEBHOOK_TIMEOUT_SECONDS.
    outbox_lease_seconds: float = Field(default=300.0, gt=0)
    # /metrics reads the outbox backlog from the database at most this often per process.
    outbox_metrics_interval_seconds: float = Field(default=5.0, ge=0)
    hold_sweep_interval_seconds: float = Field(default=15.0, gt=0)
    hold_sweep_batch_size: int = Field(default=500, ge=1)

    # Identity: the platform's identity provider signs JWTs, verified against its published
    # keys (JWKS); unset JWT_JWKS_URL accepts only API tokens. See README "Identity".
    jwt_jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # Asymmetric only: with an HMAC algorithm, anyone holding the public key could sign.
    jwt_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["RS256", "ES256"]
    )
    # Clock skew allowed between the provider and us on exp, nbf and iat.
    jwt_leeway_seconds: float = Field(default=30.0, ge=0, le=300)
    jwt_auto_provision: bool = True
    jwt_admin_role: str = "admin"
    jwt_roles_claim: str = "roles"
    # Keys older than this are refetched in the background; an unknown kid refetches at once,
    # but never more often than JWT_JWKS_MIN_REFRESH_SECONDS, so a flood of made-up kids costs
    # the provider one request per interval.
    jwt_jwks_cache_seconds: float = Field(default=600.0, gt=0)
    # At least a second: made-up `kid`s would otherwise each cost a fetch from the provider.
    jwt_jwks_min_refresh_seconds: float = Field(default=30.0, ge=1)
    jwt_jwks_timeout: float = Field(default=5.0, gt=0)

    @field_validator("jwt_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _check_algorithms(cls, value: list[str]) -> list[str]:
        # The asymmetric signatures PyJWT verifies.
        signatures = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
        signatures += ["ES256", "ES384", "ES512", "EdDSA"]
        refused = [alg for alg in value if alg not in signatures]
        if refused or not value:
            raise ValueError(
                f"JWT_ALGORITHMS may name only {', '.join(signatures)} "
                f"(never none or an HMAC algorithm); refused: {', '.join(refused) or 'empty'}"
            )
        return value

    @model_validator(mode="after")
    def _check_jwt(self) -> Self:
        # A JWT checked without issuer and audience would let in any token the provider signs
        # for any of its other applications.
        if self.jwt_jwks_url is None:
            return self
        if not self.jwt_issuer or not self.jwt_audience:
            raise ValueError("JWT_JWKS_URL needs JWT_ISSUER and JWT_AUDIENCE")
        scheme = self.jwt_jwks_url.partition("://")[0].lower()
        allowed = ("https", "file") if self.is_production else ("https", "http", "file")
        if scheme not in allowed:
            raise ValueError(f"JWT_JWKS_URL must be an {' or '.join(allowed)} URL")
        return self

    # Demo data seeded into an empty database by `make run`.
    seed_users: int = Field(default=50, ge=1)
    seed_products: int = Field(default=500, ge=1)
    seed_orders: int = Field(default=2000, ge=0)
    seed: int = 42

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("rate_limit_default")
    @classmethod
    def _check_limit(cls, value: str) -> str:
        parse_many(value)  # a typo fails at startup, not on the first request
        return value

    @field_validator("rate_limit_fields")
    @classmethod
    def _check_field_limits(cls, value: dict[str, str]) -> dict[str, str]:
        for limit in value.values():
            parse_many(limit)
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [origin.strip() for origin in text.split(",") if origin.strip()]
        return value

    @model_validator(mode="after")
    def _check_bounds(self) -> Self:
        # A default outside its own bounds would refuse every request that relies on it:
        # fail at startup instead.
        if self.default_page_size > self.max_page_size:
            raise ValueError("DEFAULT_PAGE_SIZE must not exceed MAX_PAGE_SIZE")
        if self.hold_ttl_min_seconds > self.hold_ttl_max_seconds:
            raise ValueError("HOLD_TTL_MIN_SECONDS must not exceed HOLD_TTL_MAX_SECONDS")
        ttl_min, ttl_max = self.hold_ttl_min_seconds, self.hold_ttl_max_seconds
        if not ttl_min <= self.hold_ttl_default_seconds <= ttl_max:
            raise ValueError(
                "HOLD_TTL_DEFAULT_SECONDS must lie between HOLD_TTL_MIN_SECONDS "
                "and HOLD_TTL_MAX_SECONDS"
            )
        return self

    @property
    def is_production(self) -> bool:
        return self.environment == "production"

    def production_problems(self) -> list[str]:
        """Why these settings must not serve production (none outside it): switches that
        leave the API unprotected, refused at start (gunicorn.conf.py's on_starting and
        create_app) rather than found out in an incident. Each names its variable."""
        if not self.is_production:
            return []
        problems = []
        if not self.rate_limit_enabled:
            problems.append(
                "RATE_LIMIT_ENABLED=false: nothing would stop one client from taking the "
                "service (raise RATE_LIMIT_DEFAULT instead of switching limits off)"
            )
        elif self.redis_url and "rate_limit_fail_open" not in self.model_fields_set:
            problems.append(
                "RATE_LIMIT_FAIL_OPEN is not set: while Redis is down requests would go "
                "through unlimited without anyone having chosen so; set it to true (let them "
                "through, counted in rate_limit_unchecked_total) or false (answer 503)"
            )
        everyone = [str(network) for network in self.trusted_proxies if network.prefixlen == 0]
        if everyone:
            problems.append(
                f"TRUSTED_PROXIES trusts every address ({', '.join(everyone)}): any client "
                "could name its own address in X-Forwarded-For and so its rate-limit bucket"
            )
        return problems


@lru_cache
def get_settings() -> Settings:
    return Settings()
