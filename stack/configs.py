"""The configuration files of the stack's PgBouncer and HAProxy, as a deployment would write
them (README "Production": the same topology, with its sizing)."""

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL


@dataclass(frozen=True)
class PgBouncerConfig:
    server: URL  # the PostgreSQL server (TCP, or a socket folder in `host=`)
    port: int
    pool_size: int  # server connections per database and user
    max_client_connections: int

    @property
    def host(self) -> str:
        host = self.server.query.get("host") or self.server.host or "127.0.0.1"
        return host if isinstance(host, str) else host[0]

    def ini(self, userlist: Path) -> str:
        user = self.server.username or "postgres"
        password = f" password={self.server.password}" if self.server.password else ""
        return (
            "[databases]\n"
            f"* = host={self.host} port={self.server.port or 5432} user={user}{password}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {userlist}\n"
            # Transaction pooling: the service runs with DB_PGBOUNCER=true (README).
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\nmin_pool_size = 0\nreserve_pool_size = 0\n"
            f"max_client_conn = {self.max_client_connections}\n"
            "log_connections = 0\nlog_disconnections = 0\n"
        )

    def userlist(self) -> str:
        return f'"{self.server.username or "postgres"}" "{self.server.password or ""}"\n'

    def run_as(self) -> str | None:
        """PgBouncer will not run as root: the user it drops to then (the owner of the
        server's socket folder, which the embedded server keeps to itself, else Debian's
        `postgres`); None when not root."""
        if os.geteuid() != 0:
            return None
        if self.host.startswith("/"):
            return Path(self.host).owner()
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "nobody"
        return "postgres"


def haproxy_cfg(*, port: int, stats_port: int, backends: list[int]) -> str:
    """HAProxy in front of the instances: least connections first, an instance taken out of
    rotation when its /readyz fails, the client's address passed on in X-Forwarded-For (the
    instances trust 127.0.0.1 for it: TRUSTED_PROXIES), WebSockets (subscriptions) tunneled."""
    servers = "\n".join(
        f"    server instance{n} 127.0.0.1:{backend} check inter 2s fall 2 rise 1"
        for n, backend in enumerate(backends, start=1)
    )
    return f"""global
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    option http-keep-alive

frontend booking
    bind 127.0.0.1:{port}
    option forwardfor
    default_backend instances

backend instances
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
{servers}

frontend stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /
    stats refresh 5s
"""
