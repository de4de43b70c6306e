"""Raw-socket HTTP for edge tests: what hostile or broken clients send, byte for byte."""

from __future__ import annotations

import socket
import threading
import time


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_response(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes, an error, or `timeout` seconds."""
    sock.settimeout(timeout)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionError, OSError):
            break
        if not chunk:
            break
        out += chunk
        if b"\r\n\r\n" in out and _complete(out):
            break
    return out


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def is_open(sock: socket.socket, wait: float = 0.2) -> bool:
    """True while the server keeps the connection (nothing to read, no close, no reset)."""
    sock.settimeout(wait)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except TimeoutError:
        return True
    except OSError:
        return False


def status_of(response: bytes) -> int | None:
    if not response.startswith(b"HTTP/1."):
        return None
    return int(response.split(b" ", 2)[1])


class EndlessHeader(threading.Thread):
    """Sends a header that never ends, 64 KiB a write, reconnecting whenever it is cut off."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.answers: list[int | None] = []
        self.connections = 0

    def run(self) -> None:
        piece = b"a" * 65536
        while not self.stop.is_set():
            try:
                sock = connect(self.port)
            except OSError:
                time.sleep(0.05)
                continue
            self.connections += 1
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ")
                while not self.stop.is_set():
                    sock.sendall(piece)
            except OSError:
                pass
            self.answers.append(status_of(read_response(sock, timeout=1.0)))
            sock.close()


def slow_loris(port: int, count: int) -> list[socket.socket]:
    """`count` connections that each sent half a request head and then nothing."""
    socks = []
    for _ in range(count):
        sock = connect(port)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        socks.append(sock)
    return socks
