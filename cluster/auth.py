"""The cluster handshake: HMAC-SHA256 challenge-response on a shared token.

Both sides send a fresh random nonce. The client proves it holds the token with
``HMAC(token, "client" | server nonce | client nonce)``, the server answers with
``HMAC(token, "server" | server nonce | client nonce)``, so each side knows the other holds the
token, the token itself never crosses the wire, and a recorded handshake cannot be replayed on a new
connection (the server's nonce differs). Proofs are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from liteq.exceptions import ConfigurationError

__all__ = ["NONCE_SIZE", "client_proof", "key_of", "new_nonce", "read_token", "server_proof", "verify"]

#: Bytes of randomness each side contributes to a handshake.
NONCE_SIZE = 32
_CLIENT = b"liteq-cluster-client\x00"
_SERVER = b"liteq-cluster-server\x00"


def key_of(token: str | None) -> bytes:
    """The HMAC key of a token (no token: the empty key, accepted only on loopback binds)."""
    return (token or "").encode("utf-8")


def new_nonce() -> bytes:
    """A fresh random nonce."""
    return secrets.token_bytes(NONCE_SIZE)


def client_proof(key: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """What the client sends to prove it holds the token."""
    return hmac.new(key, _CLIENT + server_nonce + client_nonce, hashlib.sha256).digest()


def server_proof(key: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """What the server sends back to prove it holds the token too."""
    return hmac.new(key, _SERVER + server_nonce + client_nonce, hashlib.sha256).digest()


def verify(expected: bytes, received: bytes) -> bool:
    """Constant-time comparison of two proofs."""
    return hmac.compare_digest(expected, received)


def read_token(token_file: str | None = None, *, env: str = "LITEQ_TOKEN") -> str | None:
    """The token from ``token_file`` (stripped of surrounding whitespace) or the ``env`` variable."""
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            raise ConfigurationError(f"cannot read the token file {token_file!r}: {exc.strerror}") from None
        if not token:
            raise ConfigurationError(f"the token file {token_file!r} is empty; put a long random secret in it")
        return token
    return os.environ.get(env) or None
