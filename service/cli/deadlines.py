"""A whole request of the CLI's client, its answer included, within a deadline: urllib3's
timeouts bound each connect and each read, and an API sending a byte every 10 s held
`docproc status` for ever (each byte began a new read)."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time


class Deadline:
    """One request under way: when it is due, and the socket its answer comes on."""

    def __init__(self, due: float, lock: threading.Condition) -> None:
        self.due = due
        self.socket: socket.socket | None = None
        self.expired = False
        self.over = False
        self._lock = lock

    def hold(self, sock: socket.socket) -> None:
        """The request goes out, and its answer comes, on `sock`; shut down at once when the
        request was ended as it connected (`Deadlines.interrupt`)."""
        with self._lock:
            if not self.over:
                self.socket = sock
                if self.expired:
                    self.cut()

    def cut(self) -> None:
        """Ends the request now, its lock held: its socket, when it has one, shut down."""
        self.expired = True
        if self.socket is not None:
            with contextlib.suppress(OSError):
                self.socket.shutdown(socket.SHUT_RDWR)

    def end(self) -> None:
        """The request is over (its connection back in the pool, or dropped): its socket is
        not its own any more."""
        with self._lock:
            self.over = True
            self.socket = None


CONNECTING_POLL = 0.05
"""Seconds between looks at a request due before it has a socket (it connects: its connect
timeout bounds that)."""


class Deadlines:
    """One thread a client, ending the requests that outlive their deadline: it shuts their
    socket down, which wakes the read waiting on it, and urllib3 raises."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._due: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._interrupted = False

    def begin(self, seconds: float) -> Deadline:
        deadline = Deadline(time.monotonic() + seconds, self._lock)
        with self._lock:
            deadline.expired = self._interrupted
            earliest = not self._due or deadline.due < self._due[0][0]
            heapq.heappush(self._due, (deadline.due, next(self._order), deadline))
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="docproc-deadlines")
                self._thread.daemon = True
                self._thread.start()
            elif earliest:
                self._lock.notify()
        return deadline

    def interrupt(self) -> None:
        """Ends every request under way, and any begun after, now (Ctrl-C)."""
        with self._lock:
            self._interrupted = True
            for _, _, deadline in self._due:
                if not deadline.over:
                    deadline.cut()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        with self._lock:
            while not self._closed:
                while self._due and self._due[0][2].over:
                    heapq.heappop(self._due)
                if not self._due:
                    self._lock.wait()
                    continue
                due, _, deadline = self._due[0]
                if due > time.monotonic():
                    self._lock.wait(due - time.monotonic())
                    continue
                if deadline.socket is None:
                    self._lock.wait(CONNECTING_POLL)
                    continue
                heapq.heappop(self._due)
                deadline.cut()
