"""Authenticators: a static token table and HS256 JWTs as DJI's demo issues them.

Both only say who a token is (``Identity``: subject, workspaces, scopes); ``dji_media.access``
decides what it may do.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
from typing import Any, Collection, FrozenSet, Mapping, Optional, Sequence, Tuple, Union

import jwt

from ..access import ALL_SCOPES, ANY_WORKSPACE, DELETE, DEVICES, READ, UPLOAD, check_scopes
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

    Each token maps either to a list of workspaces, and then holds every scope (the form from
    before scopes, which keeps its meaning), or to ``{"workspaces": [...], "scopes": [...]}``.
    For development, demos and machine clients. Tokens are compared in constant time.
    """

    def __init__(self, *, tokens: Mapping[str, Union[Sequence[str], Mapping[str, Sequence[str]]]]) -> None:
        if not tokens:
            raise ValueError("tokens must name at least one token")
        identities = {}
        for token, entry in tokens.items():
            if not isinstance(token, str) or len(token) < 8:
                raise ValueError("tokens: every token must be a string of at least 8 characters")
            workspaces, scopes = _table_entry(entry)
            # Built once (hashing the token for the subject costs more than the check) and
            # frozen, so every request of a token shares one identity.
            identities[token] = Identity(subject=f"token:{token_digest(token)}", workspaces=workspaces,
                                         scopes=scopes)
        self._identities = identities

    def example(self) -> tuple:
        """One (token, workspace) pair from the table, for a demo banner (which tries ``sts``,
        so a token that may upload is preferred)."""
        token, identity = next(((t, i) for t, i in self._identities.items() if UPLOAD in i.scopes),
                               next(iter(self._identities.items())))
        named = sorted(w for w in identity.workspaces if w != ANY_WORKSPACE)
        return token, (named[0] if named else "demo")

    def identity_of(self, token: str) -> Optional[Identity]:
        """The identity of a token of the table, or None."""
        for known, identity in self._identities.items():
            if hmac.compare_digest(known.encode(), token.encode("utf-8", "replace")):
                return identity
        return None

    def workspaces_of(self, token: str) -> Optional[frozenset]:
        identity = self.identity_of(token)
        return None if identity is None else identity.workspaces

    async def authenticate(self, token: Optional[str]) -> Identity:
        token = _require_token(token)
        identity = self.identity_of(token)
        if identity is None:
            log.info("token %s refused: not in the token table", token_digest(token))
            raise Unauthenticated("invalid X-Auth-Token")
        return identity


_ENTRY_KEYS = ("scopes", "workspaces")


def _table_entry(entry: Any) -> Tuple[FrozenSet[str], FrozenSet[str]]:
    """(workspaces, scopes) of one token of the table. Messages never quote the token."""
    if isinstance(entry, Mapping):
        unknown = sorted(repr(k) for k in entry if k not in _ENTRY_KEYS)
        if unknown:
            raise ValueError(f"tokens: unknown key(s) {', '.join(unknown)} in a token's entry "
                             f"(known: {', '.join(_ENTRY_KEYS)})")
        if any(k not in entry for k in _ENTRY_KEYS):
            # Required rather than defaulted: whoever writes this form means to limit the token,
            # and a forgotten line must not give it everything.
            raise ValueError("tokens: a token given as a mapping needs both 'workspaces' and 'scopes'")
        try:
            scopes = check_scopes(entry["scopes"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"tokens: {exc}") from None
        return _workspace_list(entry["workspaces"]), scopes
    # A bare list: the form from before scopes, whose tokens could do everything there was.
    return _workspace_list(entry), ALL_SCOPES


def _workspace_list(workspaces: Any) -> FrozenSet[str]:
    if isinstance(workspaces, (str, bytes, Mapping)) or not isinstance(workspaces, (list, tuple, set, frozenset)) \
            or not all(isinstance(w, str) for w in workspaces):
        raise ValueError("tokens: each token maps to a list of workspace ids, "
                         "or to {workspaces: [...], scopes: [...]}")
    return frozenset(workspaces)


# DJI's demo server puts ``user_type`` in its JWTs: 1 for a user of the web page, 2 for a
# pilot (Pilot 2). Pilots upload; the web page is where media is browsed, deleted and devices
# are managed.
DJI_WEB_USER = 1
DJI_PILOT = 2
DJI_USER_TYPE_SCOPES: Mapping[int, FrozenSet[str]] = {
    DJI_WEB_USER: frozenset((UPLOAD, READ, DELETE, DEVICES)),
    DJI_PILOT: frozenset((UPLOAD,)),
}


class JwtAuthenticator(Authenticator):
    """HS256 JWTs compatible with DJI's demo server.

    The workspaces come from ``workspace_claim`` (a string or a list of strings). The scopes
    come from ``scope_claim`` (a list, or a space-separated string as in OAuth's ``scope``);
    a token without it gets the scopes ``user_type_scopes`` gives its ``user_type`` claim (DJI's
    demo: 1 web user, 2 pilot), and a token with neither gets ``default_scopes``. ``username``
    (or ``sub``, or ``id``) names the user.

    :param secret: the shared HMAC secret (take it from an environment variable).
    :param issuer: when set, the ``iss`` claim must equal it.
    :param require_expiry: refuse tokens without ``exp`` (DJI's demo always sets it).
    :param leeway: seconds of clock skew tolerated on ``exp``/``nbf``.
    :param workspace_claim: the claim naming the token's workspace(s). ``"*"`` in it is ignored:
        a JWT names its workspaces.
    :param scope_claim: the claim listing the token's scopes; None: never read one. Names this
        library does not know are ignored.
    :param user_type_scopes: ``user_type`` value -> scopes, for tokens without a scope claim.
        None: ``DJI_USER_TYPE_SCOPES`` (web user: every scope; pilot: upload). It replaces that
        table, it does not add to it; ``{}`` turns the mapping off.
    :param default_scopes: the scopes of a token with neither a scope claim nor a user_type in
        the table. ``upload`` keeps every token that worked before scopes working.
    """

    ALGORITHMS = ("HS256",)

    def __init__(self, *, secret: str, issuer: Optional[str] = None, require_expiry: bool = True,
                 leeway: int = 30, workspace_claim: str = "workspace_id",
                 scope_claim: Optional[str] = "scope",
                 user_type_scopes: Optional[Mapping[Any, Sequence[str]]] = None,
                 default_scopes: Sequence[str] = (UPLOAD,)) -> None:
        # RFC 7518 wants an HS256 key at least as long as the hash (32 bytes); PyJWT warns below.
        if not secret or len(secret.encode("utf-8")) < 32:
            raise ValueError("secret must be at least 32 bytes")
        if leeway < 0:
            raise ValueError("leeway must be >= 0")
        if not workspace_claim:
            raise ValueError("workspace_claim must name a claim")
        self._secret = secret
        self._issuer = issuer
        self._leeway = leeway
        self._claim = workspace_claim
        self._scope_claim = scope_claim or None
        table: Mapping[Any, Collection[str]] = (
            DJI_USER_TYPE_SCOPES if user_type_scopes is None else user_type_scopes)
        self._user_types = {}
        for user_type, scopes in table.items():
            if isinstance(user_type, bool) or not isinstance(user_type, (int, str)):
                raise ValueError("user_type_scopes: each key must be a user_type value (a number or a string)")
            try:
                # "2" and 2 are one key: YAML and token issuers disagree on quoting.
                self._user_types[str(user_type)] = check_scopes(scopes)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"user_type_scopes: {exc}") from None
        try:
            self._default_scopes = check_scopes(default_scopes)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"default_scopes: {exc}") from None
        self._required = ["exp"] if require_expiry else []
        if issuer:
            self._required.append("iss")

    async def authenticate(self, token: Optional[str]) -> Identity:
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
        # From here on the token is signed and current: whatever is wrong with its claims is a
        # 403, never a reason to log the pilot out.
        workspaces = self._workspaces(claims.get(self._claim))
        if not workspaces:
            raise Forbidden(f"this token names no workspace ({self._claim} claim)")
        subject = claims.get("username") or claims.get("sub") or claims.get("id") or "unknown"
        return Identity(subject=str(subject), workspaces=workspaces, scopes=self._scopes(claims))

    def _workspaces(self, value: Any) -> FrozenSet[str]:
        values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        # "*" would open every workspace; an issuer that means several lists them.
        return frozenset(v for v in values if isinstance(v, str) and v and v != ANY_WORKSPACE)

    def _scopes(self, claims: Mapping[str, Any]) -> FrozenSet[str]:
        if self._scope_claim is not None and self._scope_claim in claims:
            value = claims[self._scope_claim]
            names = value.split() if isinstance(value, str) else value
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise Forbidden(f"this token's {self._scope_claim} claim is neither a list of scope "
                                "names nor a space-separated string")
            # Other names (an OAuth server's "openid", say) belong to other services.
            return ALL_SCOPES.intersection(names)
        user_type = claims.get("user_type")
        if user_type is not None and not isinstance(user_type, bool):
            scopes = self._user_types.get(str(user_type))
            if scopes is not None:
                return scopes
        return self._default_scopes
