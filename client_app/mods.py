"""Client mods: measure what crosses the wire, both directions, every message.

``bandwidth_mod`` measures the incoming message and the outgoing reply (tensor bytes and
whole-message bytes, see ``fedvit.wire``) and writes the four figures into the reply's one
MetricRecord (``metrics``), so they travel to the server inside the reply.

The report's own bytes: the up figures are measured *before* the four keys are added.
The server measures the reply as received (report included) and again with the four keys
removed; the latter must equal the client's ``bytes-up-msg`` and the difference is booked
as report overhead. So the books stay exact.
"""

from __future__ import annotations

import time

from flwr.app import Context, Message, MetricRecord
from flwr.clientapp.typing import ClientAppCallable

from client_app.task import partition_of
from fedvit.config import AppConfig
from fedvit.links import Link, node_link
from fedvit.wire import METRICS, message_bytes, tensor_bytes


def bandwidth_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Measure the message in and the reply out; report both inside the reply.

    With ``link-emulate``, also sleep for the downlink transfer before the handler and for
    the uplink transfer after it, so the wall clock follows this node's link.
    """
    down_tensor, down_msg = tensor_bytes(msg.content), message_bytes(msg)
    link = _emulated_link(context)
    if link:
        time.sleep(link.down_s(down_msg))
    reply = call_next(msg, context)
    if reply.has_error() or METRICS not in reply.content.metric_records:
        return reply
    up_tensor, up_msg = tensor_bytes(reply.content), message_bytes(reply)
    if link:
        time.sleep(link.up_s(up_msg))
    metrics: MetricRecord = reply.content[METRICS]
    metrics["bytes-down-tensor"] = down_tensor
    metrics["bytes-down-msg"] = down_msg
    metrics["bytes-up-tensor"] = up_tensor
    metrics["bytes-up-msg"] = up_msg
    return reply


def _emulated_link(context: Context) -> Link | None:
    cfg = AppConfig.from_run_config(context.run_config)
    if not cfg.link_emulate:
        return None
    return node_link(cfg, context.node_config, partition_of(context.node_config)[0])
