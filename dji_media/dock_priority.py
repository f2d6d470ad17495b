"""Asking a dock to upload one mission's media first (DJI's ``upload_flighttask_media_prioritize``).

A transport-free use case: it checks who asks and whether the dock is theirs, then sends the
command through a ``DockCommands`` (the MQTT transport is one) and reports the dock's result.
The HTTP endpoint (``dji_media.web.devices``) is one way to call it; a host application may call
it from its own code.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Mapping

from .access import DEVICES, Identity, authorize
from .devices import DeviceDirectory, check_gateway_sn
from .errors import BadRequest, UnknownDock
from .rules import MAX_SHORT_ID, check_workspace_id

__all__ = ["DockCommands", "DockPriority", "PriorityOutcome", "PRIORITIZE_METHOD", "DEFAULT_COMMAND_TIMEOUT"]

PRIORITIZE_METHOD = "upload_flighttask_media_prioritize"
# DJI's demo waits a few seconds for a services_reply; a dock on-line answers well within that.
DEFAULT_COMMAND_TIMEOUT = 3.0


class DockCommands(abc.ABC):
    """Sends a command to a dock and waits for its answer (MQTT: ``services`` and
    ``services_reply``). Must implement: ``call_service``."""

    @abc.abstractmethod
    async def call_service(self, gateway_sn: str, method: str, data: Mapping[str, Any],
                           timeout: float = DEFAULT_COMMAND_TIMEOUT) -> int:
        """The dock's ``result`` (0: done; anything else: the dock refused, with DJI's code).
        Raises ``DockTimeout`` when the dock did not answer, the retries included, and
        ``Unavailable`` when the command could not be sent (no broker connection)."""


@dataclasses.dataclass(frozen=True)
class PriorityOutcome:
    """What the dock said: ``result`` 0 is accepted, any other value is its refusal."""

    gateway_sn: str
    flight_id: str
    result: int

    @property
    def accepted(self) -> bool:
        return self.result == 0


def check_flight_id(flight_id: str) -> str:
    if not isinstance(flight_id, str) or not flight_id or len(flight_id) > MAX_SHORT_ID:
        raise BadRequest(f"flight_id must be 1 to {MAX_SHORT_ID} characters", field="flight_id")
    if any(c in flight_id for c in "/\\") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in flight_id):
        raise BadRequest("flight_id must not contain slashes or control characters", field="flight_id")
    return flight_id


class DockPriority:
    """``prioritize``: the use case. Built once with the directory that places docks in
    workspaces and the commands channel; both injected."""

    def __init__(self, directory: DeviceDirectory, commands: DockCommands, *,
                 timeout: float = DEFAULT_COMMAND_TIMEOUT) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.directory = directory
        self.commands = commands
        self.timeout = timeout

    async def prioritize(self, identity: Identity, workspace_id: str, gateway_sn: str,
                         flight_id: str) -> PriorityOutcome:
        """Ask the dock to upload ``flight_id``'s media first.

        ``Forbidden`` without the ``devices`` scope in the workspace (checked first: a caller
        without it learns nothing about docks); ``BadRequest`` for a malformed id; ``UnknownDock``
        for a dock that is not in this workspace (nobody commands another workspace's dock);
        ``DockTimeout`` / ``Unavailable`` from the commands channel."""
        authorize(identity, workspace_id, DEVICES)
        check_workspace_id(workspace_id)
        check_gateway_sn(gateway_sn)
        check_flight_id(flight_id)
        if await self.directory.workspace_of(gateway_sn) != workspace_id:
            raise UnknownDock("this dock is not in this workspace")
        result = await self.commands.call_service(gateway_sn, PRIORITIZE_METHOD, {"flight_id": flight_id},
                                                  self.timeout)
        return PriorityOutcome(gateway_sn=gateway_sn, flight_id=flight_id, result=result)
