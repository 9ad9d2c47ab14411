"""In-memory wake-ups: the reason nothing on the hot path polls.

The database is the record of truth; the hub only says *when to look*. A node's
``Subscribe`` stream waits on its :class:`NodeInbox` and wakes the moment a message
is queued for it; a ServerApp's ``Receive`` stream waits on its run's
:class:`ReplySignal` and wakes the moment a reply is stored. Losing the hub (a
restart) loses no data: subscribers re-read the database when they start.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

from appliance.proto import fleet_pb2

__all__ = ["Hub", "MessageNotice", "NodeInbox", "ReplySignal"]


@dataclass(frozen=True)
class MessageNotice:
    """A message queued for the node: its stream announces it, or delivers it if small."""

    message_id: str
    run_id: int
    content_size: int


@dataclass
class NodeInbox:
    """Events for one connected node (one live ``Subscribe`` stream)."""

    node_id: int
    events: queue.Queue[fleet_pb2.FleetEvent | MessageNotice]
    closed: threading.Event


class ReplySignal:
    """A counter that ``Receive`` streams wait on; bumped when a run gets a reply."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._version = 0

    def bump(self) -> None:
        with self._condition:
            self._version += 1
            self._condition.notify_all()

    @property
    def version(self) -> int:
        with self._condition:
            return self._version

    def wait_past(self, version: int, timeout_s: float) -> int:
        """Wait until the counter moves past ``version`` (or the timeout); return it."""
        with self._condition:
            self._condition.wait_for(lambda: self._version != version, timeout=timeout_s)
            return self._version


class Hub:
    """Subscriptions of connected nodes and reply signals of running runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inboxes: dict[int, NodeInbox] = {}
        self._signals: dict[int, ReplySignal] = {}

    def subscribe(self, node_id: int) -> NodeInbox:
        """Open the inbox of ``node_id``, closing any older stream of the same node."""
        inbox = NodeInbox(node_id, queue.Queue(), threading.Event())
        with self._lock:
            previous = self._inboxes.get(node_id)
            self._inboxes[node_id] = inbox
        if previous is not None:
            previous.closed.set()
            previous.events.put(fleet_pb2.FleetEvent())  # wake it so it ends
        return inbox

    def unsubscribe(self, inbox: NodeInbox) -> bool:
        """Close ``inbox``; True if it was the node's current stream (the node is now offline)."""
        inbox.closed.set()
        with self._lock:
            if self._inboxes.get(inbox.node_id) is inbox:
                del self._inboxes[inbox.node_id]
                return True
        return False

    def is_connected(self, node_id: int) -> bool:
        with self._lock:
            return node_id in self._inboxes

    def notify_message(
        self, node_id: int, message_id: str, run_id: int, *, content_size: int
    ) -> None:
        """Tell ``node_id`` (if connected) that a message waits for it."""
        self._send(node_id, MessageNotice(message_id, run_id, content_size))

    def notify_run_ended(self, run_id: int, status: str) -> None:
        """Tell every connected node that ``run_id`` ended (they stop its ClientApp)."""
        event = fleet_pb2.FleetEvent(run_ended=fleet_pb2.RunEnded(run_id=run_id, status=status))
        with self._lock:
            inboxes = list(self._inboxes.values())
        for inbox in inboxes:
            inbox.events.put(event)

    def _send(self, node_id: int, event: fleet_pb2.FleetEvent | MessageNotice) -> None:
        with self._lock:
            inbox = self._inboxes.get(node_id)
        if inbox is not None:
            inbox.events.put(event)

    def replies(self, run_id: int) -> ReplySignal:
        """The reply signal of ``run_id`` (created on first use)."""
        with self._lock:
            return self._signals.setdefault(run_id, ReplySignal())

    def forget_run(self, run_id: int) -> None:
        """Drop the run's signal, waking any waiter one last time."""
        with self._lock:
            signal = self._signals.pop(run_id, None)
        if signal is not None:
            signal.bump()

    def close_all(self) -> None:
        """End every subscription (shutdown)."""
        with self._lock:
            inboxes = list(self._inboxes.values())
            self._inboxes.clear()
            signals = list(self._signals.values())
        for inbox in inboxes:
            inbox.closed.set()
            inbox.events.put(fleet_pb2.FleetEvent())
        for signal in signals:
            signal.bump()
