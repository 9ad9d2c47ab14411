"""Grid: how a ServerApp reaches the nodes of its run.

The same interface is served by the local runner (:mod:`appliance.local`) and, in a
deployment, by the SuperLink's AppIo API. Besides Flower's ``push_messages`` /
``pull_messages`` / ``send_and_receive``, :meth:`Grid.receive` yields replies as they
arrive, which is what lets strategies aggregate in O(model) memory.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator

from appliance.message import Message
from appliance.records import RecordDict

__all__ = ["Grid"]


class Grid(abc.ABC):
    """A ServerApp's view of the federation for one run."""

    @property
    @abc.abstractmethod
    def run_id(self) -> int:
        """The run this grid serves."""

    @abc.abstractmethod
    def get_node_ids(self) -> list[int]:
        """The ids of the nodes currently available to this run."""

    @abc.abstractmethod
    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Queue messages for their destination nodes; return their message ids.

        Raises:
            GridError: a message is not addressed to a node of this run, is a reply,
                or reuses a message id.
        """

    @abc.abstractmethod
    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Return the replies that have arrived so far to the given messages."""

    @abc.abstractmethod
    def receive(
        self, message_ids: Iterable[str], *, timeout: float | None = None
    ) -> Iterator[Message]:
        """Yield replies to ``message_ids`` as they arrive, until all came or ``timeout`` s passed.

        Nodes that have not answered by then are simply not yielded.
        """

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str = "",
        ttl: float | None = None,
    ) -> Message:
        """Make a message for ``dst_node_id`` in this run."""
        message = Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)
        return message.with_metadata(run_id=self.run_id)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """Push ``messages`` and wait for their replies (or the timeout); return the replies."""
        return list(self.receive(self.push_messages(messages), timeout=timeout))
