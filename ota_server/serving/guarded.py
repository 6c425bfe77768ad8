"""gunicorn's gthread worker with slow clients kept off its threads: the event loop reads and writes.

gunicorn's gthread worker hands a connection to a worker thread as soon as its first bytes
arrive, and the thread then reads the request head, and later the body, from a blocking socket
with no deadline; it writes the answer the same way. A client that never finishes its head, that
trickles its body or that reads a large download slowly therefore holds a thread for as long as
it likes, and a handful of them (workers x threads) stop the server. :class:`GuardedWorker`
changes who waits (the pieces are in :mod:`.connections`):

* the worker's event loop (its main thread) reads each request, non-blocking, until the head and
  its body are complete (:class:`RequestBuffer`), then hands the bytes to gunicorn's own parser
  and the request to a thread. The head must arrive within ``header_timeout_s`` of the
  connection (or of the request's first byte on a kept-alive one); each read of a body within
  ``body_timeout_s`` of the previous one. A client past its deadline gets ``408`` and is closed.
  Bodies above ``max_buffered_body`` (uploads) go to a thread after their head, which reads the
  rest with ``body_timeout_s`` per read; an answer that does not read its body (a refused
  upload) closes the connection: the loop reads and drops what the client still sends (up to
  64 MiB, while it pauses less than 2 s), so the client reads the answer rather than a reset.
* a thread writes its answer to a :class:`DeferredOutput`, not the socket: what the socket does
  not take at once, a file above all (``sendfile``), the event loop writes as the client reads,
  dropping a client that takes nothing for ``body_timeout_s``.
* at most ``max_connections_per_ip`` connections per client address (an IPv6 address's /64) are
  open in one worker; one more is answered ``429`` and closed.

gunicorn's parser stays the one judge of framing: the loop only decides how many bytes to wait
for, and if it waits for too few, the parser reads the rest on the thread (bounded by the body
timeout); too many stay buffered as the next pipelined request. The worker does not serve TLS
or HTTP/2 itself (``ota-server serve`` configures neither); with either configured it leaves
gunicorn's behaviour unchanged. It is no rate limiter: the reverse proxy in front of the server
(docs/server.md) limits requests.
"""

from __future__ import annotations

import errno
import json
import selectors
import socket
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker

from ota_server.serving.connections import ConnectionLimits, DeferredOutput, RequestBuffer, TimedUnreader, address_key

__all__ = ["GuardedWorker"]

_RECV = 64 * 1024  # bytes per non-blocking read in the event loop
_LINGER_S = 2.0  # seconds a closing connection waits for the client's next bytes or its end
_MAX_HEAD = 1024 * 1024  # bytes of a request head the event loop buffers at most
_LINGER_BYTES = 64 * 1024 * 1024  # bytes of a refused body read and dropped before closing anyway
_DRAIN_S = 0.05  # seconds an answered request's unread body may take to come from the buffer


def _error_answer(status: str, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message, "field": None}}).encode()
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    head += "Connection: close\r\n\r\n"
    return head.encode("latin-1") + body


_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Conn(TConn):  # type: ignore[misc]
    """gunicorn's connection with what the guarded worker tracks about it."""

    def __init__(self, cfg: Any, sock: socket.socket, client: Any, server: Any, key: str | None) -> None:
        super().__init__(cfg, sock, client, server)
        self.key = key
        self.on_close: Callable[[str], None] | None = None
        self.on_linger: Callable[[_Conn], None] | None = None
        self.lingering = False  # answered, write side shut: waiting for the client to close
        self.drained = 0  # bytes read and dropped while lingering
        self.pending: RequestBuffer | None = None  # being read by the event loop
        self.ready = False  # the request is buffered: hand it to a thread
        self.continued = False  # the loop sent "100 Continue" for this request
        self.partial = False  # the loop handed over this request before its whole body arrived
        self.output: DeferredOutput | None = None  # answer left for the event loop to write
        self.deadline = 0.0

    def close(self, graceful: bool = False) -> None:
        if graceful and self.on_linger is not None:
            # gunicorn's graceful close waits up to 2 s for the client, in the event loop
            on_linger, self.on_linger = self.on_linger, None
            on_linger(self)
            return
        try:
            super().close(graceful)
        finally:
            if self.on_close is not None and self.key is not None:
                on_close, self.on_close = self.on_close, None
                on_close(self.key)
            if self.output is not None:
                self.output.close()


class GuardedWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's gthread worker whose event loop reads requests and writes answers (module doc)."""

    limits = ConnectionLimits()  # set by run_gunicorn in the master, before workers fork

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._per_address: Counter[str] = Counter()
        self._waiting: dict[_Conn, None] = {}  # conns the loop reads from or writes to, with deadlines
        cfg = self.cfg
        self._guarded = not cfg.is_ssl and getattr(cfg, "http2_cleartext", None) in (None, "off", False, "")
        if getattr(cfg, "protocol", "http") != "http":
            self._guarded = False
        line, fields, size = cfg.limit_request_line, cfg.limit_request_fields, cfg.limit_request_field_size
        # the largest head gunicorn's limits admit (past it, its parser refuses the request), at most 1 MiB
        self._max_head = min((line or 8190) + 2 + (fields or 32768) * ((size or 8190) + 2) + 2, _MAX_HEAD)
        self._refusing: set[str] = set()  # addresses at the cap, refused since they reached it

    # accepting: the per-address cap

    def accept(self, listener: socket.socket) -> None:
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        key = address_key(client_addr)
        cap = self.limits.max_connections_per_ip
        if cap and key is not None and self._per_address[key] >= cap:
            if key not in self._refusing:  # one line per address reaching the cap, not per connection
                self._refusing.add(key)
                self.log.warning("refusing connections from %s: %d open from that address", key, cap)
            message = f"more than {cap} open connections from this address"
            with _quietly():
                client_sock.send(_error_answer("429 Too Many Requests", "TOO_MANY_CONNECTIONS", message))
            client_sock.close()
            return
        self.nr_conns += 1
        client_sock.setblocking(True)
        conn = _Conn(self.cfg, client_sock, client_addr, listener.getsockname(), key)
        if key is not None:
            self._per_address[key] += 1
            conn.on_close = self._released
        if self._guarded:
            conn.on_linger = self._linger
        self.enqueue_req(conn)

    def _released(self, key: str) -> None:
        self._per_address[key] -= 1
        self._refusing.discard(key)
        if self._per_address[key] <= 0:
            del self._per_address[key]

    # reading: the whole request before a thread

    def enqueue_req(self, conn: Any) -> None:
        if not self._guarded or not isinstance(conn, _Conn) or conn.ready:
            if isinstance(conn, _Conn):
                conn.ready = False
            super().enqueue_req(conn)
            return
        leftover = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        conn.pending = RequestBuffer(leftover, max_head=self._max_head, max_body=self.limits.max_buffered_body)
        conn.continued = False
        conn.deadline = time.monotonic() + self.limits.header_timeout_s
        conn.sock.setblocking(False)
        if conn.pending.ready:
            self._dispatch(conn)
            return
        self._waiting[conn] = None
        self._on_readable(conn, None)  # a kept-alive connection is readable already: no loop turn
        if conn in self._waiting:
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _on_readable(self, conn: _Conn, _fileobj: Any) -> None:
        pending = conn.pending
        assert pending is not None
        try:
            data = conn.sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        had_head = pending.head_end is not None
        pending.feed(data)
        if pending.head_end is not None:
            conn.deadline = time.monotonic() + self.limits.body_timeout_s
            if not had_head and pending.expects_continue and not pending.ready:
                with _quietly():
                    conn.sock.send(_CONTINUE)
                conn.continued = True
        if pending.ready:
            self._unwait(conn)
            self._dispatch(conn)

    def _dispatch(self, conn: _Conn) -> None:
        pending, conn.pending = conn.pending, None
        assert pending is not None
        conn.sock.setblocking(True)
        if not conn.initialized:
            conn.init()
        if not isinstance(conn.parser.unreader, TimedUnreader):
            conn.parser.unreader = TimedUnreader(conn.sock, timeout_s=self.limits.body_timeout_s)
        conn.parser.unreader.unread(bytes(pending.data))
        conn.data_ready = True
        conn.ready = True
        conn.partial = not pending.complete
        self.enqueue_req(conn)

    # the thread: answers into a DeferredOutput

    def handle_request(self, req: Any, conn: Any) -> bool:
        if not isinstance(conn, _Conn) or not self._guarded:
            return self.answer(req, conn)
        if conn.continued:
            req._expected_100_continue = False  # the loop sent it already
        if conn.partial:
            # an answer that leaves the body unread (a refused upload) says "Connection: close":
            # the rest is read and dropped by the event loop, never waited for on this thread
            keeps = req.should_close
            req.should_close = lambda: keeps() or _body_left(req)
        real = conn.sock
        output = DeferredOutput(real, timeout_s=self.limits.body_timeout_s)
        conn.sock = output
        try:
            keepalive = bool(self.answer(req, conn))
            if not output.flush_now():
                conn.output = output
            return keepalive
        except BaseException:
            output.close()
            raise
        finally:
            conn.sock = real

    def answer(self, req: Any, conn: Any) -> bool:
        """Answer one parsed request, writing to ``conn.sock`` (gunicorn's way; subclasses add theirs)."""
        return bool(super().handle_request(req, conn))

    def _keepalive_after(self, conn: Any, keepalive: bool) -> bool:
        # an answer that left its body unread (a refused upload) closes the connection rather
        # than waiting for the client to send the rest
        if not keepalive:
            return False
        return bool(conn.parser.finish_body(deadline=time.monotonic() + _DRAIN_S))

    # writing: the answer the socket did not take at once

    def finish_request(self, conn: Any, fs: Future[Any]) -> None:
        output = getattr(conn, "output", None)
        if output is None or fs.cancelled() or fs.exception() is not None:
            super().finish_request(conn, fs)
            return
        conn.output = None
        conn.sock.setblocking(False)
        conn.deadline = time.monotonic() + self.limits.body_timeout_s
        self._waiting[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_WRITE, partial(self._on_writable, conn, output, fs))

    def _on_writable(self, conn: _Conn, output: DeferredOutput, fs: Future[Any], _fileobj: Any) -> None:
        try:
            progress, done = output.flush()
        except OSError:
            output.close()
            self._drop(conn, answer=False)
            return
        if progress:
            conn.deadline = time.monotonic() + self.limits.body_timeout_s
        if done:
            self._unwait(conn)
            super().finish_request(conn, fs)

    def _linger(self, conn: _Conn) -> None:
        """Close like gunicorn's graceful close (RFC 9112 section 9.6), waiting in the event loop."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
        except OSError:
            conn.close()
            return
        conn.lingering = True
        conn.deadline = time.monotonic() + _LINGER_S
        self._waiting[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_lingering, conn))

    def _on_lingering(self, conn: _Conn, _fileobj: Any) -> None:
        try:
            data = conn.sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.drained += len(data)
        if not data or conn.drained > _LINGER_BYTES:
            self._unwait(conn)
            conn.close()
        else:  # a client still sending a refused body reads its answer, not a reset
            conn.deadline = time.monotonic() + _LINGER_S

    # deadlines

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c in self._waiting if c.deadline <= now]:
            if conn.lingering:
                self._unwait(conn)
                conn.close()
                continue
            self.log.info("closed a connection from %s: past its %s deadline", conn.key, _phase(conn))
            self._drop(conn)

    def _unwait(self, conn: _Conn) -> None:
        self._waiting.pop(conn, None)
        with _quietly():
            self.poller.unregister(conn.sock)

    def _drop(self, conn: _Conn, *, answer: bool = True) -> None:
        self._unwait(conn)
        pending, conn.pending = conn.pending, None
        if answer and pending is not None and pending.started:
            message = f"the request did not arrive within the {_phase(conn, pending)} timeout"
            with _quietly():
                conn.sock.send(_error_answer("408 Request Timeout", "REQUEST_TIMEOUT", message))
        self.nr_conns -= 1
        conn.close()


def _body_left(req: Any) -> bool:
    """Whether bytes of ``req``'s body are still to be read from the client."""
    reader = getattr(req.body, "reader", None)
    length = getattr(reader, "length", None)
    return not isinstance(length, int) or length > 0  # a chunked body is taken as unread


def _phase(conn: _Conn, pending: RequestBuffer | None = None) -> str:
    pending = pending or conn.pending
    if pending is None:
        return "send"
    return "header" if pending.head_end is None else "body"


class _quietly:
    """Ignore an OSError: a best-effort write to a client that may be gone."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, (OSError, KeyError, ValueError))
