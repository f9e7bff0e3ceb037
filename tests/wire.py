"""A hand-written HTTP/1.1 server for tests: answers are bytes the test wrote.

Not h11 and not the mock upstream: each answer goes on the wire exactly as given,
so tests can send what other servers send (capitalised names, cut bodies, a close
instead of a length) and see what the gateway's client did on the wire.
"""

from __future__ import annotations

import trio

__all__ = ["WireServer", "serve"]


class WireServer:
    """Answers the *n*-th request with ``answers[n]`` (the last one repeating), and
    counts connections. ``close_after_answer`` closes each connection after one answer
    (an HTTP/1.0 server, or ``Connection: close``)."""

    def __init__(self, *answers: bytes, close_after_answer: bool = False) -> None:
        self.answers = list(answers)
        self.close_after_answer = close_after_answer
        self.connections = 0
        self.open = 0
        self.requests: list[bytes] = []

    @property
    def answer(self) -> bytes:
        """The first answer (servers with one answer give it to every request)."""
        return self.answers[0]

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self.open += 1
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                while len(buffer) < length:
                    buffer += await stream.receive_some(65536)
                self.requests.append(head + b"\r\n\r\n" + buffer[:length])
                buffer = buffer[length:]
                await stream.send_all(self.answers[min(len(self.requests), len(self.answers)) - 1])
                if self.close_after_answer:
                    return
        except trio.BrokenResourceError:
            return
        finally:
            self.open -= 1
            await stream.aclose()


async def serve(nursery: trio.Nursery, server: WireServer) -> int:
    """Serve ``server`` on a free loopback port until ``nursery`` ends; return the port."""
    listeners = await nursery.start(trio.serve_tcp, server.handle, 0)
    return int(listeners[0].socket.getsockname()[1])
