"""A bounded hand-off from a producer thread to one reader, which may stop reading early.

A producer that writes into a plain bounded queue blocks for ever once its reader has gone away;
here ``stop()`` makes its next ``put`` raise :class:`Stopped`, so it unwinds and ends. Used where a
worker thread makes a layer's bytes while another thread reads them (a tar made again from its
snapshot, a layer compressed while it is pushed): memory stays bounded by the queue's size.
"""

from __future__ import annotations

import queue
import threading


class Stopped(Exception):
    """The reader stopped: the producer gives up."""


class HandOff:
    def __init__(self, size: int):
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._stop = threading.Event()

    def put(self, item) -> None:
        """Hand ITEM on, waiting while the queue is full; Stopped once the reader has stopped."""
        while True:
            if self._stop.is_set():
                raise Stopped()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self, timeout: float | None = None):
        """The next item (queue.Empty after TIMEOUT, if one is given)."""
        return self._queue.get(timeout=timeout)

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()
