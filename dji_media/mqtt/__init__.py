"""The MQTT transport: DJI Docks (Dock 1, 2 and 3) over a broker, beside the HTTP transport
(``dji_media.web``) for Pilot 2. Needs the ``mqtt`` extra (aiomqtt). doc/mqtt.md describes it.

``wire`` owns the dock's format (topics, envelopes, spellings); ``MqttTransport`` is a
``dji_media.runtime.Transport`` that hands the media methods to the service.
"""
from __future__ import annotations

from .transport import DEFAULT_MAX_PAYLOAD_BYTES, DockService, MqttTransport

__all__ = ["MqttTransport", "DockService", "DEFAULT_MAX_PAYLOAD_BYTES"]
