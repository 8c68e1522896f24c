"""ECS skeletons for a flow's events, computed once per flow instead of once per message.

Formatting addresses, the Community ID and the ``source``/``destination``/``network`` objects
costs more than dissecting a Modbus PDU, so a :class:`FlowContext` builds them when a flow starts;
each event copies them (the copies are shallow: one level of ``dict``), so events stay
independent documents.
"""

from __future__ import annotations

from typing import Any

from collectors.packet import ip_text, mac_text
from soc.event import ECS_VERSION, community_id, event_id, format_timestamp
from soc.types import Event


class FlowContext:
    """ECS parts of both directions of one TCP or UDP flow (client to server, and back)."""

    __slots__ = ("client_ip", "community_id", "server_ip", "sides")

    def __init__(
        self,
        transport: str,
        protocol: str,
        client: tuple[bytes, int, bytes],
        server: tuple[bytes, int, bytes],
    ) -> None:
        client_ip, server_ip = ip_text(client[0]), ip_text(server[0])
        self.client_ip, self.server_ip = client_ip, server_ip
        self.community_id = community_id(transport, client_ip, server_ip, client[1], server[1])
        ends = []
        for (_, port, mac), text in ((client, client_ip), (server, server_ip)):
            end: dict[str, Any] = {"ip": text, "port": port}
            if mac:
                end["mac"] = mac_text(mac)
            ends.append(end)
        network = {
            "transport": transport,
            "type": "ipv6" if ":" in client_ip else "ipv4",
            "protocol": protocol,
            "community_id": self.community_id,
        }
        related = {"ip": [client_ip, server_ip] if client_ip != server_ip else [client_ip]}
        #: (source, destination, network, related) for to-server (True) and to-client (False)
        self.sides = {
            True: (ends[0], ends[1], network, related),
            False: (ends[1], ends[0], network, related),
        }

    def event(
        self,
        to_server: bool,
        ts_us: int,
        dataset: str,
        id_parts: tuple[Any, ...],
        observer: dict[str, Any],
    ) -> Event:
        """A new event of this flow, in one direction, with ``event.*`` to fill in."""
        source, destination, network, related = self.sides[to_server]
        return {
            "@timestamp": format_timestamp(ts_us),
            "ecs": {"version": ECS_VERSION},
            "event": {
                "id": event_id(ts_us, dataset, *id_parts),
                "kind": "event",
                "dataset": dataset,
                "module": "ics",
                "category": ["network"],
            },
            "source": dict(source),
            "destination": dict(destination),
            "network": dict(network),
            "related": {"ip": list(related["ip"])},
            "observer": dict(observer),
        }
