"""``dji-media devices``: bind docks to workspaces, unbind them and list the bindings, in the
configured database (``devices: {backend: database}``; the media store's URL and table prefix).

The operator's tool: it works while the server runs (every server process sees the table; a
change reaches a running server within the directory's cache delay, a few seconds). Unlike the
HTTP endpoint, ``bind`` moves a dock bound to another workspace and says so: whoever holds the
configuration file may already do anything to any workspace.

Exit status: 0 done; 1 the database could not answer; 2 a configuration or input error (one
line on stderr, naming the key or the field).
"""
from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING, Optional

from .devices import check_gateway_sn
from .errors import BadRequest, DjiMediaError
from .rules import check_workspace_id

if TYPE_CHECKING:
    from .config import Config

__all__ = ["devices_command"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _refuse(message: str) -> int:
    print(f"dji-media: devices: {message}", file=sys.stderr)
    return 2


async def devices_command(config: "Config", action: str, *, gateway_sn: Optional[str] = None,
                          workspace_id: Optional[str] = None, note: Optional[str] = None) -> int:
    """Run ``bind``, ``unbind`` or ``list``; print what was done; return the exit status."""
    if config.devices.backend != "database":
        return _refuse("devices.backend: the configuration keeps docks in a static table; "
                       "set `devices: {backend: database}` to bind them with this command")
    # Checked before the database is opened: a typo costs no connection and changes nothing.
    try:
        if gateway_sn is not None:
            check_gateway_sn(gateway_sn)
        if workspace_id is not None:
            check_workspace_id(workspace_id)
    except BadRequest as exc:
        return _refuse(exc.message)

    from .backends.peewee_devices import DatabaseDeviceDirectory
    from .backends.peewee_store import PeeweeMediaStore

    if not issubclass(config.media_store.cls, PeeweeMediaStore):
        return _refuse(f"devices.backend: database needs the peewee media_store, not "
                       f"{config.media_store.cls.__name__}")
    store = config.media_store.build()
    directory = DatabaseDeviceDirectory(store, cache_seconds=0)
    try:
        if action == "bind":
            assert gateway_sn is not None and workspace_id is not None
            before = await directory.workspace_of(gateway_sn)
            binding = await directory.bind(gateway_sn, workspace_id, note=note)
            moved = f" (moved from {before})" if before is not None and before != workspace_id else ""
            print(f"bound {binding.gateway_sn} to {binding.workspace_id}{moved}")
        elif action == "unbind":
            assert gateway_sn is not None
            removed = await directory.unbind(gateway_sn)
            print(f"unbound {gateway_sn}" if removed else f"{gateway_sn} was not bound: nothing to do")
        else:
            for b in await directory.list(workspace_id):
                bound_at = b.bound_at.strftime("%Y-%m-%dT%H:%M:%SZ")
                # A note is an operator's free text: a tab or newline in it must not split the line.
                note_text = _CONTROL.sub(" ", b.note or "")
                print(f"{b.gateway_sn}\t{b.workspace_id}\t{bound_at}\t{note_text}".rstrip("\t"))
        return 0
    except BadRequest as exc:  # the note, checked by the directory
        return _refuse(exc.message)
    except DjiMediaError as exc:  # DatabaseUnavailable, SchemaMismatch: the message says what to do
        print(f"dji-media: devices: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await directory.close()
        await store.close()
