"""--max-builds: at most N builds run at once; beyond that they wait, served fairly across users.

Each user has a FIFO of waiting builds; when a slot frees, the user whose turn it is (round robin
over the users that wait, starting after the one served last) gets it. So one user's ten queued
builds do not hold back another user's one.
"""

from __future__ import annotations

import collections
import threading


class Cancelled(Exception):
    """The build gave up its place (its client went away, the server is stopping)."""


class FairQueue:
    def __init__(self, slots: int):
        self.slots = max(1, slots)
        self.running = 0
        self._waiting: collections.OrderedDict[str, collections.deque] = collections.OrderedDict()
        self._cond = threading.Condition()

    def _next_ticket(self):
        user, tickets = next(iter(self._waiting.items()))
        return user, tickets[0]

    def acquire(self, user: str, cancelled=lambda: False, poll: float = 0.2) -> None:
        """Wait for a slot; CANCELLED() is asked every POLL seconds while waiting."""
        ticket = object()
        with self._cond:
            self._waiting.setdefault(user, collections.deque()).append(ticket)
            try:
                while not (self.running < self.slots and self._next_ticket() == (user, ticket)):
                    if cancelled():
                        raise Cancelled()
                    self._cond.wait(poll)
                self.running += 1
                self._served(user)
            finally:
                tickets = self._waiting.get(user)
                if tickets is not None and ticket in tickets:
                    tickets.remove(ticket)
                    if not tickets:
                        del self._waiting[user]
                self._cond.notify_all()

    def _served(self, user: str) -> None:
        """Round robin: the user just served goes to the back of the line."""
        if user in self._waiting:
            self._waiting.move_to_end(user)

    def release(self) -> None:
        with self._cond:
            self.running -= 1
            self._cond.notify_all()

    def waiting(self) -> int:
        with self._cond:
            return sum(len(t) for t in self._waiting.values())
