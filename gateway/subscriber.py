"""A subscription as a project actor sees it (`actors.messages.Subscriber`).

The actor calls `deliver` from its own thread with the items it rendered; the mailbox
hands them to the loop's Dispatcher, and there its connection's Outbox frames them with
the subscription's `prefix` and keeps at most `capacity` of them behind a paused socket.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from actors.messages import Selection
from gateway.outbox import Item, Outbox

_serials = itertools.count(1)


class SubscriptionMailbox:
    """A subscription as the project actor sees it (`actors.messages.Subscriber`)."""

    __slots__ = ("key", "selection", "serial", "prefix", "capacity", "_outbox", "_on_fail")

    def __init__(
        self,
        outbox: Outbox,
        prefix: bytes,
        selection: Selection,
        capacity: int,
        on_fail: Callable[[list[dict[str, Any]]], None],
    ) -> None:
        self.serial = next(_serials)  # the outbox's name for it (0 is control frames)
        self.key = self.serial
        self.selection = selection
        self.prefix = prefix  # a frame is prefix + payload + b"}"
        self.capacity = capacity  # live frames that may wait behind a paused socket
        self._outbox = outbox
        self._on_fail = on_fail

    def deliver(self, items: Sequence[Item], *, replay: bool = False) -> None:
        outbox = self._outbox
        outbox.dispatcher.submit(outbox, self, items, replay)

    def fail(self, errors: list[dict[str, Any]]) -> None:
        self._on_fail(errors)

    def when_written(self, callback: Callable[[], None]) -> None:
        """`callback` once what was delivered so far is on the socket (a replay's pace)."""
        self._outbox.when_written(self.serial, callback)
