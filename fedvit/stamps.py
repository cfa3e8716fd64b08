"""A reply's timestamps: where one message's time went on its node, on the wall clock.

Every ok reply carries, in its ``metrics`` record, the wall-clock times (``time.time()``,
seconds since the epoch, on the node's own clock) at which its message passed each step
on the node, in this order:

=================== ==========================================================================
key                  the moment
=================== ==========================================================================
``t-process-start``  the OS created the process serving the message (``fedvit.startup``)
``t-mod-in``         the client mod received the message (Flower's runtime is done with it)
``t-handler-in``     the handler started (after the mod's byte count / emulated download)
``t-task-built``     the model and data loaders exist (cached after a process's first message)
``t-compute-start``  the received tensors are decoded and loaded into the model
``t-compute-end``    local training (and evaluation) finished
``t-handler-out``    the reply's tensors are encoded (the handler returns)
``t-mod-out``        the mod hands the reply back to Flower (after its byte count / emulated
                     upload)
=================== ==========================================================================

plus ``fresh-process`` (1 when this message is the first the process served, so its
start-up was paid for this message; 0 otherwise) and the seconds the mod spent on its own
byte counting (``time-books``) and sleeping an emulated link (``time-transfer``).

``server_app.timeline`` turns these, with the server's own push and pull times, into a
round's phase table.
"""

from __future__ import annotations

PROCESS_START = "t-process-start"
MOD_IN = "t-mod-in"
HANDLER_IN = "t-handler-in"
TASK_BUILT = "t-task-built"
COMPUTE_START = "t-compute-start"
COMPUTE_END = "t-compute-end"
HANDLER_OUT = "t-handler-out"
MOD_OUT = "t-mod-out"
STAMPS = (PROCESS_START, MOD_IN, HANDLER_IN, TASK_BUILT, COMPUTE_START, COMPUTE_END,
          HANDLER_OUT, MOD_OUT)
FRESH = "fresh-process"
BOOKS_S = "time-books"  # the mod's byte counting, both directions
TRANSFER_S = "time-transfer"  # the mod's emulated link sleeps, both directions
# What the client mod adds to a reply after it measured the reply's bytes.
MOD_STAMPS = (PROCESS_START, FRESH, BOOKS_S, TRANSFER_S, MOD_IN, MOD_OUT)
# Per-phase seconds of local compute reported by the handler (``time-<phase>``).
COMPUTE_PHASES = ("data", "forward", "backward", "optimizer", "eval")
