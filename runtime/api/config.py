"""The control API's settings: where it listens, where its secret comes from, what it allows."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SECRET_ENV = "AVATAR_API_SECRET"
MIN_SECRET_BYTES = 32  # HS256 wants a key at least as long as its 256-bit hash


class ApiConfigError(ValueError):
    """Settings the API refuses to start with; the message says what to change."""


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_size(text: str) -> int:
    """``65536``, ``64K``, ``64M``, ``1G`` (binary multiples) -> bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    digits = t[:-1] if scale > 1 else t
    if not digits.isdigit():
        raise ApiConfigError(f"a size is a number of bytes, optionally with K, M or G (64M), got '{text}'")
    return int(digits) * scale


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``PORT`` (on 127.0.0.1) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ApiConfigError(f"API address must be HOST:PORT, got '{text}'") from None
    if not 0 <= number <= 65535:
        raise ApiConfigError(f"API port must be in 0 .. 65535, got {number}")
    return host, number


@dataclass
class ApiConfig:
    """How the control API runs.

    The HS256 secret comes from ``secret_file`` if given, else from the environment variable
    ``secret_env``. ``insecure_local`` turns authentication off, and is refused unless ``host``
    is a loopback address. ``rate`` requests per second with bursts of ``burst`` are allowed per
    client (its token's subject, or its address without one). ``max_body_bytes`` caps a JSON
    body; ``max_upload_bytes`` a voice streamed to POST /speak.
    """

    host: str = "127.0.0.1"
    port: int = 8081
    secret_env: str = DEFAULT_SECRET_ENV
    secret_file: str | None = None
    insecure_local: bool = False
    cors_origins: list[str] = field(default_factory=list)
    rate: float = 20.0
    burst: int = 40
    tls_cert: str | None = None
    tls_key: str | None = None
    max_body_bytes: int = 65536
    max_upload_bytes: int = 64 * 1024 * 1024

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    def secret(self) -> str | None:
        """The signing secret, or None when none is configured (only valid with insecure_local)."""
        if self.secret_file:
            try:
                text = Path(self.secret_file).read_text().strip()
            except OSError as exc:
                raise ApiConfigError(f"cannot read the API secret file '{self.secret_file}': {exc.strerror}") from None
            if not text:
                raise ApiConfigError(f"the API secret file '{self.secret_file}' is empty")
        else:
            text = os.environ.get(self.secret_env, "").strip()
            if not text:
                return None
        if len(text.encode()) < MIN_SECRET_BYTES:
            where = f"file '{self.secret_file}'" if self.secret_file else f"${self.secret_env}"
            raise ApiConfigError(f"the API secret in {where} is shorter than {MIN_SECRET_BYTES} bytes; make one with: "
                                 "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        return text

    def check(self) -> str | None:
        """Raise ApiConfigError for settings that must not run; return the secret (None if insecure_local)."""
        if self.insecure_local and not is_loopback(self.host):
            raise ApiConfigError(f"unauthenticated access (insecure_local) is only allowed on a loopback address "
                                 f"(127.0.0.1, ::1, localhost), not on '{self.host}'")
        if self.rate <= 0 or self.burst < 1:
            raise ApiConfigError(f"rate limit must be > 0 requests/s with a burst >= 1, got {self.rate}/s burst {self.burst}")
        if self.max_upload_bytes < 1:
            raise ApiConfigError(f"the upload limit must be at least 1 byte, got {self.max_upload_bytes}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ApiConfigError("TLS needs both a certificate and its key (tls_cert and tls_key)")
        for path in (self.tls_cert, self.tls_key):
            if path and not Path(path).is_file():
                raise ApiConfigError(f"TLS file '{path}' does not exist")
        for origin in self.cors_origins:
            if origin != "*" and "://" not in origin:
                raise ApiConfigError(f"a CORS origin is scheme://host[:port] (or *), got '{origin}'")
        secret = self.secret()
        if secret is None and not self.insecure_local:
            raise ApiConfigError(f"the API needs a secret: set ${self.secret_env} or give a secret file "
                                 "(or, on a loopback address only, allow unauthenticated local use explicitly)")
        return None if self.insecure_local else secret

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"
