"""Authenticators: a static token table and HS256 JWTs as DJI's demo issues them."""
from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Mapping, Optional, Sequence

import jwt

from ..errors import Forbidden, Unauthenticated
from ..interfaces import Authenticator
from ..values import Identity

log = logging.getLogger("dji_media.auth")

MAX_TOKEN = 8192


def token_digest(token: str) -> str:
    """A short, non-reversible tag for logs: correlate requests without logging the token."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:12]


def _require_token(token: Optional[str]) -> str:
    if not token:
        raise Unauthenticated("missing X-Auth-Token")
    if len(token) > MAX_TOKEN:
        raise Unauthenticated("invalid X-Auth-Token")
    return token


class StaticTokenAuthenticator(Authenticator):
    """A fixed table of tokens, each allowed into a list of workspaces (``"*"``: any).

    For development, demos and machine clients. Tokens are compared in constant time.
    """

    def __init__(self, *, tokens: Mapping[str, Sequence[str]]) -> None:
        if not tokens:
            raise ValueError("tokens must name at least one token")
        table = {}
        for token, workspaces in tokens.items():
            if not isinstance(token, str) or len(token) < 8:
                raise ValueError("tokens: every token must be a string of at least 8 characters")
            if isinstance(workspaces, str) or not all(isinstance(w, str) for w in workspaces):
                raise ValueError("tokens: each token maps to a list of workspace ids")
            table[token] = frozenset(workspaces)
        self._tokens = table
        # Built once: hashing the token for the subject on every request costs more than the check.
        self._subjects = {token: f"token:{token_digest(token)}" for token in table}

    def example(self) -> tuple:
        """One (token, workspace) pair from the table, for a demo banner."""
        token, workspaces = next(iter(self._tokens.items()))
        named = sorted(w for w in workspaces if w != "*")
        return token, (named[0] if named else "demo")

    def workspaces_of(self, token: str) -> Optional[frozenset]:
        for known, workspaces in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode("utf-8", "replace")):
                return workspaces
        return None

    async def authenticate(self, token: Optional[str], workspace_id: str) -> Identity:
        token = _require_token(token)
        workspaces = self.workspaces_of(token)
        if workspaces is None:
            log.info("token %s refused: not in the token table", token_digest(token))
            raise Unauthenticated("invalid X-Auth-Token")
        if "*" not in workspaces and workspace_id not in workspaces:
            raise Forbidden("this token may not access this workspace")
        # The token matched one of the table (in constant time), so looking it up leaks nothing.
        return Identity(subject=self._subjects[token], workspace_id=workspace_id)


class JwtAuthenticator(Authenticator):
    """HS256 JWTs compatible with DJI's demo server: the claim ``workspace_id`` names the one
    workspace the token may use; ``username`` (or ``sub``) names the user.

    :param secret: the shared HMAC secret (take it from an environment variable).
    :param issuer: when set, the ``iss`` claim must equal it.
    :param require_expiry: refuse tokens without ``exp`` (DJI's demo always sets it).
    :param leeway: seconds of clock skew tolerated on ``exp``/``nbf``.
    """

    ALGORITHMS = ("HS256",)

    def __init__(self, *, secret: str, issuer: Optional[str] = None, require_expiry: bool = True,
                 leeway: int = 30, workspace_claim: str = "workspace_id") -> None:
        # RFC 7518 wants an HS256 key at least as long as the hash (32 bytes); PyJWT warns below.
        if not secret or len(secret.encode("utf-8")) < 32:
            raise ValueError("secret must be at least 32 bytes")
        if leeway < 0:
            raise ValueError("leeway must be >= 0")
        self._secret = secret
        self._issuer = issuer
        self._leeway = leeway
        self._claim = workspace_claim
        self._required = ["exp"] if require_expiry else []
        if issuer:
            self._required.append("iss")

    async def authenticate(self, token: Optional[str], workspace_id: str) -> Identity:
        token = _require_token(token)
        try:
            # The algorithm list is fixed: a token may not choose "none" or RS256.
            claims = jwt.decode(
                token, self._secret, algorithms=list(self.ALGORITHMS), issuer=self._issuer,
                leeway=self._leeway, options={"require": self._required},
            )
        except jwt.PyJWTError as exc:
            log.info("token %s refused: %s", token_digest(token), type(exc).__name__)
            raise Unauthenticated("invalid or expired X-Auth-Token") from None
        allowed = claims.get(self._claim)
        if not isinstance(allowed, str) or not allowed:
            # Signed and current, so not a reason to log the pilot out: it just opens nothing.
            raise Forbidden(f"this token names no workspace ({self._claim} claim)")
        if not hmac.compare_digest(allowed.encode(), workspace_id.encode("utf-8", "replace")):
            raise Forbidden("this token may not access this workspace")
        subject = claims.get("username") or claims.get("sub") or claims.get("id") or "unknown"
        return Identity(subject=str(subject), workspace_id=workspace_id)
