"""Bearer tokens: HS256 JWTs whose ``role`` claim says what a client may do.

Roles are ordered: ``viewer`` reads (stats, graph, metrics), ``operator`` also sets params and
emotion, ``admin`` also swaps nodes. A token must carry ``role`` and ``exp``; ``sub`` names
the client (the rate limit counts per subject).
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt

ALGORITHM = "HS256"
ROLES = ("viewer", "operator", "admin")  # each may do everything the ones before it may
_RANK = {r: i for i, r in enumerate(ROLES)}


class AuthError(Exception):
    """A request without a usable token (401); ``code`` is the RFC 6750 error code, if any."""

    def __init__(self, detail: str, code: str | None = "invalid_token"):
        super().__init__(detail)
        self.detail, self.code = detail, code

    def www_authenticate(self) -> str:
        if self.code is None:
            return 'Bearer realm="avatar"'
        text = self.detail.replace('"', "'").replace("\\", "/")
        return f'Bearer realm="avatar", error="{self.code}", error_description="{text}"'


class RoleError(Exception):
    """A valid token whose role may not do this (403)."""


@dataclass(frozen=True)
class Principal:
    """Who is asking: the token's subject and role."""

    subject: str | None
    role: str

    def allows(self, role: str) -> bool:
        return _RANK[self.role] >= _RANK[role]


LOCAL = Principal("local", "admin")  # every request when unauthenticated local use is configured


def make_token(secret: str, role: str, ttl: float = 3600.0, subject: str | None = None) -> str:
    """A signed token for ``role``, valid for ``ttl`` seconds; ``subject`` defaults to a random name."""
    if role not in _RANK:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got '{role}'")
    now = int(time.time())
    claims = {"sub": subject or f"{role}-{secrets.token_hex(4)}", "role": role, "iat": now, "exp": now + int(ttl)}
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer ...`` header; None if there is no header."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("the Authorization header must be 'Bearer <token>'", "invalid_request")
    return token.strip()


def decode(token: str, secret: str) -> Principal:
    """Verify a token; AuthError says why it is not accepted."""
    try:
        claims: dict[str, Any] = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "role"]},
                                            leeway=5)
    except jwt.ExpiredSignatureError:
        raise AuthError("the token has expired") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"the token has no '{exc.claim}' claim") from None
    except jwt.InvalidSignatureError:
        raise AuthError("the token's signature does not match this server's secret") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"the token is not valid: {exc}") from None
    role = claims.get("role")
    if role not in _RANK:
        raise AuthError(f"the token's role must be one of {', '.join(ROLES)}, got {role!r}")
    sub = claims.get("sub")
    return Principal(str(sub) if sub is not None else None, role)


def authenticate(authorization: str | None, secret: str | None) -> Principal:
    """The principal behind a request's Authorization header (LOCAL when there is no secret)."""
    if secret is None:
        return LOCAL
    token = bearer_token(authorization)
    if token is None:
        raise AuthError("this endpoint needs a bearer token (Authorization: Bearer <token>)", None)
    return decode(token, secret)


def subject_or_none(authorization: str | None, secret: str | None) -> str | None:
    """The subject of a valid token, for rate limiting; None for a missing or bad one."""
    if secret is None or not authorization:
        return None
    try:
        return authenticate(authorization, secret).subject
    except AuthError:
        return None
