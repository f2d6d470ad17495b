"""Which workspace a device belongs to: the ``DeviceDirectory`` plugin interface.

A dock's MQTT messages name the dock (its serial number, in the topic) but never the workspace
its media belongs to. The host application knows: it bound the dock to a workspace when the dock
was set up (DJI's demo keeps a ``device_sn -> workspace_id`` table). A transport asks the
directory and refuses a dock it cannot place, because filing a dock's media into a guessed
workspace is worse than letting the dock retry.

Implementations: ``StaticDeviceDirectory`` (a fixed table, from configuration) and
``InMemoryDeviceDirectory`` (changeable at run time; tests, host applications that keep the
binding themselves). A database-backed directory fits the same interface.
"""
from __future__ import annotations

import abc
import re
import types
from typing import Dict, Mapping, Optional

from .errors import BadRequest
from .rules import MAX_SHORT_ID, check_workspace_id

__all__ = ["DeviceDirectory", "StaticDeviceDirectory", "InMemoryDeviceDirectory", "GATEWAY_SN_RE",
           "check_gateway_sn"]

# DJI serial numbers are letters and digits. Anything else in a topic level is not a device we
# know how to address (and '+', '#', '/' would change what a reply topic means).
GATEWAY_SN_RE = re.compile(r"[A-Za-z0-9]{1,%d}" % MAX_SHORT_ID)


def check_gateway_sn(sn: str) -> str:
    """Return the serial number, or raise ``BadRequest`` naming ``gateway_sn``."""
    if not isinstance(sn, str) or not GATEWAY_SN_RE.fullmatch(sn):
        raise BadRequest(f"gateway_sn must be 1 to {MAX_SHORT_ID} letters and digits", field="gateway_sn")
    return sn


class DeviceDirectory(abc.ABC):
    """Answers "which workspace does this gateway (dock, remote controller) belong to?".

    Must implement: ``workspace_of``. Has a usable default: ``close`` (nothing to release).
    """

    @abc.abstractmethod
    async def workspace_of(self, gateway_sn: str) -> Optional[str]:
        """The workspace id the device is bound to, or None when it is bound to none (an unknown
        device: the caller ignores its messages). Raises ``Unavailable`` when the directory
        cannot be asked (its database is down): the caller then lets the device retry, which an
        unknown device would not deserve."""

    async def close(self) -> None:
        """Release connections and pools. Called once, when the transport that owns it stops.
        The default has nothing to release."""
        return None


class StaticDeviceDirectory(DeviceDirectory):
    """A fixed table ``{gateway_sn: workspace_id}``, checked when built: a serial number that is
    not letters and digits, or a malformed workspace id, raises ``ValueError`` naming it."""

    def __init__(self, devices: Mapping[str, str]) -> None:
        table: Dict[str, str] = {}
        for sn, workspace_id in devices.items():
            try:
                check_gateway_sn(sn)
                check_workspace_id(workspace_id)
            except BadRequest as exc:
                raise ValueError(f"device {sn!r}: {exc.message}") from None
            table[sn] = workspace_id
        # Read-only: the table is what the configuration said, for the process's lifetime.
        self.devices: Mapping[str, str] = types.MappingProxyType(table)

    async def workspace_of(self, gateway_sn: str) -> Optional[str]:
        return self.devices.get(gateway_sn)


class InMemoryDeviceDirectory(DeviceDirectory):
    """A table that changes while the server runs (``bind``, ``unbind``): for tests and for
    host applications that keep the binding themselves and tell the directory."""

    def __init__(self, devices: Optional[Mapping[str, str]] = None) -> None:
        self._devices: Dict[str, str] = {}
        for sn, workspace_id in (devices or {}).items():
            self.bind(sn, workspace_id)

    def bind(self, gateway_sn: str, workspace_id: str) -> None:
        """Bind the device to the workspace (replacing an earlier binding); ``ValueError`` for a
        malformed serial number or workspace id."""
        try:
            check_gateway_sn(gateway_sn)
            check_workspace_id(workspace_id)
        except BadRequest as exc:
            raise ValueError(exc.message) from None
        self._devices[gateway_sn] = workspace_id

    def unbind(self, gateway_sn: str) -> None:
        self._devices.pop(gateway_sn, None)

    async def workspace_of(self, gateway_sn: str) -> Optional[str]:
        return self._devices.get(gateway_sn)
