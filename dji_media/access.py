"""Authorisation: what an identity may do, decided in one place.

An ``Authenticator`` says who a token is (``Identity``: subject, workspaces, scopes); the use
case says what it requires (a scope, in a workspace); ``authorize`` decides. Keeping the two
apart lets a pilot's token upload without being able to delete, whichever backend checked it.

Scopes:

========== =========================================================================
``upload`` the Pilot 2 / dock upload flow: fast-upload, tiny-fingerprints, sts,
           upload-callback, group-upload-callback
``read``   list and download media (the read API)
``delete`` delete media
``devices`` manage devices
========== =========================================================================
"""
from __future__ import annotations

import hmac
import inspect
import logging
from typing import Any, Awaitable, Callable, FrozenSet, Iterable, Optional

from .errors import Forbidden
from .values import Identity

log = logging.getLogger("dji_media.auth")

UPLOAD = "upload"
READ = "read"
DELETE = "delete"
DEVICES = "devices"

ALL_SCOPES: FrozenSet[str] = frozenset((UPLOAD, READ, DELETE, DEVICES))

# In an identity's workspaces: every workspace.
ANY_WORKSPACE = "*"


def check_scopes(names: Iterable[Any]) -> FrozenSet[str]:
    """The scope names as a frozenset; ValueError naming those this library does not know.

    For configuration (a typo must not silently grant or withhold a right), not for tokens.
    """
    if isinstance(names, str):
        raise ValueError("scopes must be a list of scope names, not a string")
    names = list(names)
    unknown = sorted({repr(n) for n in names if n not in ALL_SCOPES})
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)} (known: {', '.join(sorted(ALL_SCOPES))})")
    return frozenset(names)


def covers(identity: Identity, workspace_id: str) -> bool:
    """Whether the identity may act on ``workspace_id`` (``"*"`` in its workspaces: any)."""
    wanted = workspace_id.encode("utf-8", "replace")
    found = False
    # Every entry is compared, in constant time, as the JWT check did before it moved here: how
    # long the answer takes says nothing about which workspaces a token covers.
    for allowed in identity.workspaces:
        found |= allowed == ANY_WORKSPACE or hmac.compare_digest(allowed.encode("utf-8", "replace"), wanted)
    return found


def authorize(identity: Identity, workspace_id: str, scope: str) -> None:
    """Raise ``Forbidden`` unless the identity may do ``scope`` in ``workspace_id``.

    The workspace is checked first, so a token for another workspace is told only that.
    """
    if not covers(identity, workspace_id):
        raise Forbidden("this token may not access this workspace")
    if scope not in identity.scopes:
        raise Forbidden(f"this token lacks the {scope!r} scope")


# ------------------------------------------------------------------ authenticator signatures

Identify = Callable[[Optional[str], str], Awaitable[Identity]]


def takes_workspace(authenticator: Any) -> bool:
    """True for an authenticator written for the signature before scopes,
    ``authenticate(token, workspace_id)``: a second positional parameter without a default."""
    try:
        params = list(inspect.signature(authenticator.authenticate).parameters.values())
    except (TypeError, ValueError):  # no signature to read: assume the current interface
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 and positional[1].default is inspect.Parameter.empty


def identify_with(authenticator: Any) -> Identify:
    """An ``identify(token, workspace_id)`` coroutine function for the authenticator, decided once.

    A current authenticator is asked ``authenticate(token)``. One written for the old
    ``authenticate(token, workspace_id)`` is asked about the request's workspace and, when it
    lets the token in, the identity gets that workspace and every scope: its "yes" meant "may do
    everything there", as a static token configured without scopes still does. It is logged
    once, at start-up, so its owner knows to port it and narrow what its tokens may do.
    """
    if not takes_workspace(authenticator):
        async def identify(token: Optional[str], workspace_id: str) -> Identity:
            return await authenticator.authenticate(token)
        return identify

    log.warning("%s.authenticate(token, workspace_id) is the signature before scopes: each "
                "token it accepts gets every scope in that workspace; port it to "
                "authenticate(token) to limit what tokens may do", type(authenticator).__name__)

    async def identify_legacy(token: Optional[str], workspace_id: str) -> Identity:
        found = await authenticator.authenticate(token, workspace_id)
        return Identity(subject=found.subject, workspaces=frozenset((workspace_id,)), scopes=ALL_SCOPES)
    return identify_legacy
