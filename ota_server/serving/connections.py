"""The pieces that keep slow clients off gunicorn's worker threads (used by :mod:`.guarded`).

* :class:`ConnectionLimits`: the deadlines and the per-address cap (``ota-server serve`` flags);
* :class:`RequestBuffer`: one request's bytes as the event loop reads them, and whether they are
  enough to hand to a thread (head complete, body complete or too large to buffer);
* :class:`TimedUnreader`: gunicorn's socket reader holding those bytes, each further read bounded;
* :class:`DeferredOutput`: an answer written without waiting for the client, files by reference;
* :func:`address_key`: what the per-address cap counts.

No event loop and no worker here: nothing in this module registers a socket or closes one.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import selectors
import socket
from collections import deque
from dataclasses import dataclass
from typing import Any

from gunicorn.http.unreader import SocketUnreader

__all__ = ["ConnectionLimits", "DeferredOutput", "RequestBuffer", "TimedUnreader", "address_key"]

_OUTPUT_HELD = 256 * 1024  # bytes of a generated answer held before its thread waits for the client


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a client may take and how many connections it may hold (``ota-server serve`` flags)."""

    header_timeout_s: float = 10.0  # seconds for a request's head, from the connection or its first byte
    body_timeout_s: float = 30.0  # seconds between two reads of a body, or two writes of an answer
    max_connections_per_ip: int = 32  # open connections per client address in one worker; 0: no cap
    max_buffered_body: int = 2 * 1024 * 1024 + 64 * 1024  # bytes of body read by the event loop

    def __post_init__(self) -> None:
        """Raises: ValueError: a timeout that is not positive, a negative cap or buffer."""
        if not (self.header_timeout_s > 0 and self.body_timeout_s > 0):
            raise ValueError(f"timeouts must be > 0 s, got header {self.header_timeout_s}, body {self.body_timeout_s}")
        if self.max_connections_per_ip < 0 or self.max_buffered_body < 0:
            raise ValueError(
                f"max_connections_per_ip and max_buffered_body must be >= 0, "
                f"got {self.max_connections_per_ip} and {self.max_buffered_body}"
            )


def address_key(client: Any) -> str | None:
    """What the per-address cap counts for a peer address: the IPv4 address, an IPv6 address's
    /64 (one subscriber's usual allocation), None for a Unix socket (not capped)."""
    if not isinstance(client, tuple) or not client:
        return None
    try:
        ip = ipaddress.ip_address(str(client[0]).split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class RequestBuffer:
    """The bytes of one request as they arrive, and whether they are enough to hand to a thread.

    ``ready`` once the head and its body are complete, or once waiting longer cannot help: a head
    over ``max_head`` bytes, a body over ``max_body``, framing this class does not follow (a
    malformed ``Content-Length``, a transfer coding other than chunked). gunicorn's parser reads
    the same bytes again and answers anything malformed. Bytes past the request stay in
    :attr:`data` (a pipelined request) for the parser too.
    """

    def __init__(self, data: bytes = b"", *, max_head: int, max_body: int) -> None:
        self.data = bytearray(data)
        self.max_head = max_head
        self.max_body = max_body
        self.head_end: int | None = None
        self.expects_continue = False  # HTTP/1.1 head with "Expect: 100-continue" and a body
        self.ready = False
        self.complete = False  # ready with the whole request buffered (else a thread reads the rest)
        self._length: int | None = None  # end offset of a Content-Length body
        self._chunked_at: int | None = None  # offset of the next chunk-size line
        self._scan = 0
        self._advance()

    @property
    def started(self) -> bool:
        """Whether any byte of a request (not just blank lines) has arrived."""
        return bool(self.data.strip(b"\r\n"))

    def feed(self, data: bytes) -> None:
        self.data += data
        self._advance()

    def _advance(self) -> None:
        if self.ready:
            return
        if self.head_end is None and not self._find_head():
            return
        if self._length is not None:
            self.ready = self.complete = len(self.data) >= self._length
        elif self._chunked_at is not None:
            self._advance_chunks()
        elif not self.ready:  # no body, and framing this class follows
            self.ready = self.complete = True

    def _find_head(self) -> bool:
        data = self.data
        start = len(data) - len(data.lstrip(b"\r\n"))
        at = max(start, self._scan - 3)
        ends = [(i, i + n) for i, n in ((data.find(b"\r\n\r\n", at), 4), (data.find(b"\n\n", at), 2)) if i >= 0]
        if not ends:
            self._scan = len(data)
            self.ready = len(data) - start > self.max_head
            return False
        self.head_end = min(ends)[1]
        self._frame(bytes(data[start : self.head_end]))
        return True

    def _frame(self, head: bytes) -> None:
        lines = head.split(b"\n")
        lengths, codings, expect = [], [], b""
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            key, value = name.strip().lower(), value.strip()
            if key == b"content-length":
                lengths.append(value)
            elif key == b"transfer-encoding":
                codings.append(value.lower())
            elif key == b"expect":
                expect = value.lower()
        assert self.head_end is not None
        if codings:
            if codings[-1].split(b",")[-1].strip() != b"chunked":
                self.ready = True  # gunicorn refuses it
                return
            self._chunked_at = self.head_end
        elif lengths:
            if len(set(lengths)) != 1 or not lengths[0].isdigit():
                self.ready = True  # gunicorn refuses it
                return
            size = int(lengths[0])
            if size > self.max_body:
                self.ready = True  # an upload: a thread reads it, bounded per read
                return
            self._length = self.head_end + size
        else:
            return
        if expect == b"100-continue" and lines[0].rstrip(b"\r").endswith(b"HTTP/1.1"):
            self.expects_continue = True

    def _advance_chunks(self) -> None:
        assert self._chunked_at is not None and self.head_end is not None
        data, at = self.data, self._chunked_at
        while True:
            if at - self.head_end > self.max_body:
                self.ready = True
                return
            eol = data.find(b"\n", at)
            if eol < 0:
                self.ready = len(data) - at > 1024  # no chunk-size line is that long
                return
            size_text = bytes(data[at:eol]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                self.ready = True  # gunicorn refuses it
                return
            if size == 0:
                if data[eol + 1 : eol + 3] == b"\r\n" or data[eol + 1 : eol + 2] == b"\n":
                    self.ready = self.complete = True
                elif data.find(b"\n\r\n", eol + 1) >= 0 or data.find(b"\n\n", eol + 1) >= 0:
                    self.ready = self.complete = True  # trailer fields, then the blank line
                return
            end = eol + 1 + size + 2
            if len(data) < end:
                self._chunked_at = at
                self.ready = end - self.head_end > self.max_body
                return
            at = end
            self._chunked_at = at


class TimedUnreader(SocketUnreader):  # type: ignore[misc]
    """gunicorn's socket reader, holding bytes the event loop read and bounding its own reads.

    A thread reads from the socket only for what the loop did not buffer (the rest of an upload);
    each such read waits at most ``timeout_s`` unless the caller set a timeout of its own.
    """

    def __init__(self, sock: socket.socket, *, timeout_s: float) -> None:
        super().__init__(sock)
        self.timeout_s = timeout_s

    def chunk(self, size_hint: int | None = None) -> bytes:
        if self.sock.gettimeout() is None:
            self.sock.settimeout(self.timeout_s)
        return bytes(super().chunk(size_hint))


class DeferredOutput:
    """An answer's bytes and files, written to the client without waiting for it.

    Stands in for the socket gunicorn's response writes to (``sendall``, ``send``, ``sendfile``);
    anything else goes to the real socket. :meth:`flush` writes what the socket takes now. A
    generated answer held past ``_OUTPUT_HELD`` bytes makes the thread wait for the client, at most
    ``timeout_s`` per write; a file is only referenced (a duplicate descriptor), never read into
    memory. Not thread-safe: one thread fills it, then the event loop empties it.
    """

    #: the worker reads a body the app left unread in its event loop, after the answer: an app
    #: need not (and must not, on its thread) drain a refused body to get its answer read
    drains_in_event_loop = True

    def __init__(self, sock: socket.socket, *, timeout_s: float) -> None:
        self._sock = sock
        self._timeout_s = timeout_s
        self._pieces: deque[bytes | list[int]] = deque()  # bytes, or [fd, offset, count]
        self._held = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    @property
    def empty(self) -> bool:
        return not self._pieces

    def sendall(self, data: bytes) -> None:
        if data:
            self._pieces.append(bytes(data))
            self._held += len(data)
            if self._held > _OUTPUT_HELD:
                self._wait_below(_OUTPUT_HELD)

    def send(self, data: bytes) -> int:
        self.sendall(data)
        return len(data)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        fd = os.dup(file.fileno())
        size = count if count is not None else os.fstat(fd).st_size - offset
        self._pieces.append([fd, offset, size])
        return size

    def flush(self) -> tuple[bool, bool]:
        """Write what the (non-blocking) socket takes now; returns (any progress, all written).

        Raises:
            OSError: the client is gone.
        """
        progress = False
        fileno = self._sock.fileno()
        while self._pieces:
            piece = self._pieces[0]
            try:
                if isinstance(piece, bytes):
                    sent = self._sock.send(piece)
                    self._held -= sent
                    rest = piece[sent:]
                    if rest:
                        self._pieces[0] = rest
                    else:
                        self._pieces.popleft()
                else:
                    fd, offset, count = piece
                    sent = os.sendfile(fileno, fd, offset, count) if count else 0
                    if sent == 0 and count:
                        raise BrokenPipeError(errno.EPIPE, "file ended before its announced length")
                    piece[1], piece[2] = offset + sent, count - sent
                    if piece[2] == 0:
                        os.close(fd)
                        self._pieces.popleft()
            except (BlockingIOError, InterruptedError):
                return progress, False
            progress = progress or sent > 0
        return progress, True

    def flush_now(self) -> bool:
        """:meth:`flush` from the thread, on the socket made non-blocking for it; True when all is written.

        Raises:
            OSError: the client is gone.
        """
        timeout = self._sock.gettimeout()
        self._sock.setblocking(False)
        try:
            return self.flush()[1]
        finally:
            self._sock.settimeout(timeout)

    def _wait_below(self, held: int) -> None:
        while self._held > held:
            if self.flush_now():
                return
            with selectors.DefaultSelector() as sel:
                sel.register(self._sock, selectors.EVENT_WRITE)
                if not sel.select(self._timeout_s):
                    raise TimeoutError(f"the client took no bytes for {self._timeout_s:g} s")

    def close(self) -> None:
        """Release the files still to be written (the answer is abandoned)."""
        while self._pieces:
            piece = self._pieces.popleft()
            if not isinstance(piece, bytes):
                os.close(piece[0])
