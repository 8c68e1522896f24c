"""ECS skeletons for a flow's events, computed once per flow instead of once per message.

Formatting addresses, the Community ID and the ``source``/``destination``/``network`` objects
costs more than dissecting a Modbus PDU, so a :class:`FlowContext` builds them when a flow starts;
each event copies them (the copies are shallow: one level of ``dict``), so events stay
independent documents.
"""

from __future__ import annotations

from typing import Any

from collectors.packet import ip_text, mac_text
from soc.event import ECS_VERSION, community_id, format_timestamp, stream_tag
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
        event_id: str,
        dataset: str,
        observer: dict[str, Any],
    ) -> Event:
        """A new event of this flow, in one direction, with ``event.*`` to fill in.

        ``event_id``: from :func:`soc.event.event_id`, or :func:`soc.event.stream_event_id` with
        :meth:`stream_tag` (the hot path: the flow's part is hashed once).
        """
        source, destination, network, related = self.sides[to_server]
        return {
            "@timestamp": format_timestamp(ts_us),
            "ecs": {"version": ECS_VERSION},
            "event": {
                "id": event_id,
                "kind": "event",
                "dataset": dataset,
                "module": "ics",
                "category": ["network"],
            },
            "source": source.copy(),
            "destination": destination.copy(),
            "network": network.copy(),
            "related": {"ip": related["ip"].copy()},
            "observer": observer.copy(),
        }

    def stream_tag(self, dataset: str, to_server: bool) -> str:
        """The tag of this flow's event ids in one direction (:func:`soc.event.stream_tag` of
        the dataset, the flow's Community ID and its client and server, and the direction)."""
        return stream_tag(
            dataset, self.community_id, self.client_ip, self.server_ip, int(to_server)
        )
