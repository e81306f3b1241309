"""Bearer JWTs of the identity provider: signature, algorithm, issuer, audience and dates
checked, the claims this service uses read. No database: a refused token costs none."""

import base64
import binascii
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jwt
import orjson

from core.bounded import ExpiringCache
from core.settings import Settings
from services.jwks import SigningKeys, UnknownKey

# Every claim a token must carry; iss and aud are also compared with the settings.
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
MAX_SUBJECT_LENGTH = 255  # users.external_subject


class TokenRejected(Exception):
    """The token is not one to trust; the message says why, and may be shown to the client."""


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """What a verified token says about its holder."""

    subject: str
    email: str | None
    email_verified: bool
    name: str | None
    roles: frozenset[str]


def looks_like_jwt(token: str) -> bool:
    """Three dot-separated parts (JWS compact serialization); opaque tokens have no dot."""
    return token.count(".") == 2


class JwtVerifier:
    """Verifies tokens, and remembers the ones it verified for `cache_seconds` (capped at their
    `exp`): a frontend sends the same token with every request until it expires, and checking
    it again costs about 100 µs (PyJWT's parsing more than the signature), a lookup 1 µs. The
    price is the one of the actor cache: a key the provider withdraws stops working within
    that time, on top of the JWKS refresh."""

    def __init__(
        self,
        keys: SigningKeys,
        *,
        issuer: str,
        audience: str,
        algorithms: Sequence[str],
        leeway: float,
        roles_claim: str,
        cache_seconds: float = 0.0,
        max_cached: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.algorithms = list(algorithms)
        self.leeway = leeway
        self.roles_claim = roles_claim
        self.cache_seconds = cache_seconds
        self._clock = clock
        # sha256 of the token -> its claims: bounded by digests, not by tokens of up to 8 KiB.
        self._verified: ExpiringCache[bytes, VerifiedToken] = ExpiringCache(max_cached, clock)

    @classmethod
    def from_settings(cls, settings: Settings) -> "JwtVerifier | None":
        """The verifier JWT_* describe; None without JWT_JWKS_URL (API tokens only)."""
        if settings.jwt_jwks_url is None:
            return None
        # Settings refuse a JWKS URL without issuer and audience.
        assert settings.jwt_issuer is not None and settings.jwt_audience is not None
        keys = SigningKeys(
            settings.jwt_jwks_url,
            max_age=settings.jwt_jwks_cache_seconds,
            min_interval=settings.jwt_jwks_min_refresh_seconds,
            timeout=settings.jwt_jwks_timeout,
        )
        return cls(
            keys,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            algorithms=settings.jwt_algorithms,
            leeway=settings.jwt_leeway_seconds,
            roles_claim=settings.jwt_roles_claim,
            cache_seconds=settings.auth_cache_seconds,
        )

    async def verify(self, token: str) -> VerifiedToken:
        """The token's claims once everything checks out, else TokenRejected. KeysUnavailable
        (services.jwks) when no key could ever be loaded: the token may well be good."""
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._verified.get(digest)
        if cached is not None:
            return cached
        verified, expires_at = await self._verify(token)
        # Trusted for cache_seconds, never past the token's own expiry.
        self._verified.put(digest, verified, min(self.cache_seconds, expires_at - self._clock()))
        return verified

    async def _verify(self, token: str) -> tuple[VerifiedToken, float]:
        header = _header(token)
        algorithm = header.get("alg")
        # Checked before any key is looked for: `none` and HMAC never get that far.
        if algorithm not in self.algorithms:
            raise TokenRejected(f"JWT algorithm {algorithm!r} is not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenRejected("JWT has no key id (kid)")
        try:
            key = await self.keys.key(kid)
        except UnknownKey:
            raise TokenRejected("JWT signed by an unknown key") from None
        try:
            # The PyJWK binds its own algorithm: a token whose header names another is refused.
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejected("JWT expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("JWT not yet valid") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("JWT from another issuer") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("JWT for another audience") from None
        except jwt.MissingRequiredClaimError as error:
            raise TokenRejected(f"JWT without the {error.claim!r} claim") from None
        except jwt.PyJWTError:
            raise TokenRejected("JWT signature or claims invalid") from None
        return self._claims(claims), float(claims["exp"])

    def _claims(self, claims: dict[str, Any]) -> VerifiedToken:
        subject = claims["sub"]
        if not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUBJECT_LENGTH:
            raise TokenRejected("JWT subject (sub) is not a usable string")
        email = claims.get("email")
        name = claims.get("name")
        # Some providers (Cognito) send the boolean as a string.
        verified = claims.get("email_verified") in (True, "true")
        return VerifiedToken(
            subject=subject,
            email=email if isinstance(email, str) and email else None,
            email_verified=verified,
            name=name if isinstance(name, str) and name.strip() else None,
            roles=_roles(claims.get(self.roles_claim)),
        )


def _header(token: str) -> dict[str, Any]:
    """The JOSE header, read here rather than by `jwt.get_unverified_header`, which checks
    the whole token's encoding (then `jwt.decode` does it again): the header is what tells us
    whether to go on at all. Only read: the signature, checked later, covers it."""
    segment = token.partition(".")[0]
    try:
        header = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError):
        raise TokenRejected("malformed JWT") from None
    if not isinstance(header, dict):
        raise TokenRejected("malformed JWT")
    return header


def _roles(value: object) -> frozenset[str]:
    """A roles claim as providers send it: a list of names, or one space-separated string."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(role for role in value if isinstance(role, str))
    return frozenset()
