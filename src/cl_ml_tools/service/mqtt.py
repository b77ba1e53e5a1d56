"""Job events on MQTT (paho-mqtt): ``<prefix>/jobs/<id>/status``, ``.../progress`` and ``.../result``, each a
JSON object (the same documents as ``GET /jobs/{id}/status`` and ``/results``; progress is
``{"job_id", "progress", "message"}``).

A job's end is delivered: its final ``status`` and its ``result`` are published with QoS 1 (at least) and
retained, so that a subscriber that connects later, after a broker outage included, gets the final status
of every job at once. While the broker cannot be reached they wait in memory (paho's queue, at most
``MAX_QUEUED`` messages) and go out when the connection is back. Everything else (``queued``/``running``
statuses, progress) is best effort: dropped during an outage. The jobs run all the same, one warning per
outage is logged, and the client keeps reconnecting in the background. A deleted job's retained messages
are cleared.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

log = logging.getLogger(__name__)

EVENTS = ("status", "progress", "result")
FINAL_STATES = ("done", "error")
DEFAULT_PORT = 1883
MAX_QUEUED = 10000


class Events(Protocol):
    def publish(self, job_id: str, event: str, document: Mapping[str, Any]) -> None: ...

    def forget(self, job_id: str) -> None: ...

    @property
    def state(self) -> str: ...

    def close(self) -> None: ...


class NoEvents:
    """MQTT switched off (``mqtt.enabled: false``, the default)."""

    state = "off"

    def publish(self, job_id: str, event: str, document: Mapping[str, Any]) -> None:
        return None

    def forget(self, job_id: str) -> None:
        return None

    def close(self) -> None:
        return None


def parse_broker(broker: str) -> tuple[str, int]:
    """``host[:port]`` (an IPv6 address in brackets: ``[::1]:1883``) → (host, port)."""
    if broker.startswith("["):
        host, _, rest = broker[1:].partition("]")
        port = rest.removeprefix(":")
    elif broker.count(":") == 1:
        host, port = broker.split(":")
    else:  # a bare host name, or an IPv6 address without brackets or port
        host, port = broker, ""
    if not port:
        return host, DEFAULT_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"mqtt.broker {broker!r}: the port must be a number from 1 to 65535")
    return host, int(port)


class MqttEvents:
    """A paho client in its own network thread, connecting (and reconnecting) in the background."""

    def __init__(self, broker: str, topic_prefix: str, qos: int = 1):
        import paho.mqtt.client as paho

        self.broker = broker
        self.host, self.port = parse_broker(broker)
        self.prefix = topic_prefix.rstrip("/")
        self.qos = qos
        self._connected = threading.Event()
        self._warned = False
        self._closing = False
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"cl_ml_tools-{uuid.uuid4().hex[:12]}")
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.reconnect_delay_set(1, 30)
        self._client.max_queued_messages_set(MAX_QUEUED)
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()

    @property
    def state(self) -> str:
        return "connected" if self._connected.is_set() else "disconnected"

    def _warn(self, why: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "MQTT broker %s: %s; jobs still run, their events are not published until it is back", self.broker, why
            )

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if getattr(reason, "is_failure", False):
            self._warn(f"connection refused ({reason})")
            return
        self._connected.set()
        self._warned = False
        log.info("MQTT broker %s: connected", self.broker)

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._connected.clear()
        self._warn("cannot connect")

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._connected.clear()
        if not self._closing:
            self._warn(f"disconnected ({reason})")

    def topic(self, job_id: str, event: str) -> str:
        return f"{self.prefix}/jobs/{job_id}/{event}"

    def publish(self, job_id: str, event: str, document: Mapping[str, Any]) -> None:
        assert event in EVENTS
        final = event == "result" or (event == "status" and document.get("status") in FINAL_STATES)
        if not self._connected.is_set():
            self._warn("not connected")
            if not final:
                return
        payload = json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        # paho keeps QoS 1 messages published while disconnected and sends them on reconnection.
        qos = max(1, self.qos) if final else self.qos
        self._client.publish(self.topic(job_id, event), payload, qos=qos, retain=final)

    def forget(self, job_id: str) -> None:
        """Clear a deleted job's retained messages (an empty retained message removes one)."""
        for event in ("status", "result"):
            self._client.publish(self.topic(job_id, event), b"", qos=max(1, self.qos), retain=True)

    def close(self) -> None:
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()


def events(config: Mapping[str, Any]) -> Events:
    """The publisher the ``mqtt`` config section asks for."""
    if not config.get("enabled"):
        return NoEvents()
    return MqttEvents(config["broker"], config["topic_prefix"], config["qos"])
