"""A stand-in for the platform's identity provider: real RSA and EC keys (made with
`cryptography`), its JWKS document served over real HTTP (or written to a file), and JWTs signed
as Auth0, Keycloak or Cognito sign them."""

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://id.example.test/"
AUDIENCE = "https://booking-api.example.test"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class IdentityProvider:
    """Signing keys by kid (one RSA, one EC at first), and the tokens they sign."""

    def __init__(self) -> None:
        self.keys: dict[str, PrivateKey] = {}
        self.add_key("rsa-1", rsa.generate_private_key(public_exponent=65537, key_size=2048))
        self.add_key("ec-1", ec.generate_private_key(ec.SECP256R1()))
        # A key the provider never published: what a forger signs with.
        self.stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def add_key(self, kid: str, key: PrivateKey) -> None:
        self.keys[kid] = key

    def jwks(self) -> dict[str, Any]:
        members = []
        for kid, key in self.keys.items():
            if isinstance(key, rsa.RSAPrivateKey):
                member = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
                member.update(alg="RS256")
            else:
                member = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
                member.update(alg="ES256")
            members.append({**member, "kid": kid, "use": "sig"})
        return {"keys": members}

    def write_jwks(self, path: Path) -> str:
        path.write_text(json.dumps(self.jwks()))
        return path.as_uri()

    def claims(self, subject: str | None = None, **overrides: Any) -> dict[str, Any]:
        """Claims of a fresh, valid token; `None` in `overrides` drops a claim."""
        now = int(time.time())
        subject = subject or f"auth0|{uuid.uuid4().hex}"
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "email": f"{subject.replace('|', '.')}@people.example.test",
            "email_verified": True,
            "name": "Grace Hopper",
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    def token(
        self,
        subject: str | None = None,
        *,
        kid: str = "rsa-1",
        signing_key: PrivateKey | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        key = signing_key or self.keys[kid]
        algorithm = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
        return jwt.encode(
            self.claims(subject, **claims),
            key,
            algorithm=algorithm,
            headers={"kid": kid, **(headers or {})},
        )


class JwksServer:
    """The provider's JWKS endpoint on a loopback port: counts its requests, can be down."""

    def __init__(self, provider: IdentityProvider) -> None:
        self.provider = provider
        self.requests = 0
        self.down = False
        self.url = ""

    @contextmanager
    def serving(self) -> Iterator[str]:
        server_state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server_state.requests += 1
                if server_state.down:
                    self.send_response(503)
                    self.end_headers()
                    return
                body = json.dumps(server_state.provider.jwks()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        self.url = f"http://127.0.0.1:{httpd.server_address[1]}/.well-known/jwks.json"
        try:
            yield self.url
        finally:
            httpd.shutdown()
            httpd.server_close()
            thread.join(10)
