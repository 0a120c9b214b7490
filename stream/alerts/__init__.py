"""The alert engine: rules on result fields and events, states pending -> firing -> resolved with
latching until acknowledged, deduplication and a repeat rate, and the notifiers (retained MQTT
topic, webhook, log). The engine itself runs inside the node as the ``alerts`` processor
(processors/alert_rules.py); the notifiers are sinks for ``alert`` frames.

Kept light: importing this package pulls in no transport or HTTP client.
"""

from __future__ import annotations

from ..frame import is_known_kind, register_kind

# Operator commands (alert acknowledgements) travel through the node as frames of this kind, so
# they are recorded and replayed in order with the data: the engine stays deterministic on replay.
COMMAND_KIND = "command"
if not is_known_kind(COMMAND_KIND):
    register_kind(COMMAND_KIND)

ACK_COMMAND = "ack"


def ack_topic(experiment: str, root: str = "opmon") -> str:
    """The MQTT command topic on which acknowledgements arrive as JSON ``{rule, cell}``."""
    return f"{root}/{experiment}/alerts/ack"


def alert_topic(experiment: str, alert_id: str, root: str = "opmon") -> str:
    """The retained topic of one alert: ``opmon/<experiment>/alerts/<rule>/<cell>[/<group>]``."""
    return f"{root}/{experiment}/alerts/{alert_id}"
