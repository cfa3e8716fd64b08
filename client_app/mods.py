"""``bandwidth_mod`` measures each message in and reply out and stamps both (``t-*``); it
measures the reply before adding its own keys (``REPORT_KEYS``), so the server books the
report exactly. ``packing_mod`` unpacks and packs (``pack-tensors``)."""

from __future__ import annotations

import copy
import time

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from client_app.task import partition_of
from fedvit import keys
from fedvit.config.appconfig import AppConfig
from fedvit.startup import process_start_time
from fedvit.wire.links import node_link
from fedvit.wire.measure import message_size, tensor_bytes
from fedvit.wire.packing import is_packed, pack_record, unpack_record

# Messages this process served: a deployment (Flower 1.41) runs each in a fresh process.
_served = {"messages": 0}


def bandwidth_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Measure the message in and the reply out; report both inside the reply. With
    ``link-emulate``, sleep each transfer's time, so the wall clock follows the node's link."""
    t_in = time.time()
    fresh = _served["messages"] == 0
    _served["messages"] += 1
    down_tensor, (down_msg, down_objects) = tensor_bytes(msg.content), message_size(msg)
    books_s = time.time() - t_in
    cfg, transfer_s = AppConfig.from_run_config(context.run_config), 0.0
    link = (node_link(cfg, context.node_config, partition_of(context.node_config)[0])
            if cfg.link_emulate else None)
    if link:
        transfer_s += _sleep(link.down_s(down_msg, down_objects))
    reply = call_next(msg, context)
    if reply.has_error() or keys.METRICS not in reply.content.metric_records:
        return reply
    t0 = time.time()
    up_tensor, (up_msg, up_objects) = tensor_bytes(reply.content), message_size(reply)
    books_s += time.time() - t0
    if link:
        transfer_s += _sleep(link.up_s(up_msg, up_objects))
    metrics: MetricRecord = reply.content[keys.METRICS]
    metrics.update(zip(keys.BYTES_KEYS, (down_tensor, down_msg, up_tensor, up_msg), strict=True))
    metrics.update({keys.PROCESS_START: process_start_time(), keys.FRESH: int(fresh),
                    keys.BOOKS_S: books_s, keys.TRANSFER_S: transfer_s, keys.MOD_IN: t_in,
                    keys.MOD_OUT: time.time()})
    return reply


def _sleep(seconds: float) -> float:
    t0 = time.time()
    time.sleep(seconds)
    return time.time() - t0


def packing_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Unpack a packed message's tensors for the handler and pack its reply's alike (others pass
    as they are). A malformed packed record raises ``PackingError`` (an error reply)."""
    record = msg.content.array_records.get(keys.ARRAYS)
    packed = record is not None and is_packed(record)
    if packed:  # a new message: the one received stays as it crossed the wire
        content = RecordDict(dict(msg.content.items()))
        content[keys.ARRAYS] = unpack_record(record)
        msg = Message(content=content, metadata=copy.deepcopy(msg.metadata))
    reply = call_next(msg, context)
    if packed and not reply.has_error() and keys.ARRAYS in reply.content.array_records:
        reply.content[keys.ARRAYS] = pack_record(reply.content[keys.ARRAYS])
    return reply


WIRE_MODS = (bandwidth_mod, packing_mod)  # outermost first: the books see the wire's layout
