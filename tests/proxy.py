"""A TCP proxy a test controls: slow down new connections, or cut the link (existing connections dropped,
new ones refused) and restore it. Puts a slow or unreachable third party, or ledger, between real processes."""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class Proxy:
    """Forwards 127.0.0.1:<port> to an upstream. While `delay` > 0 each new connection waits that long first;
    between `cut()` and `restore()` every open connection is dropped and new ones are closed at once."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = 0.0
        self.port = 0
        self.refused = 0  # connections turned away while cut
        self.sent = 0  # bytes passed on to the upstream
        self._cut = False
        self._open: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self.refused += 1
            writer.close()
            return
        if self.delay:
            await asyncio.sleep(self.delay)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._open |= {writer, up_writer}
        try:
            await asyncio.gather(_pipe(reader, up_writer, self._count), _pipe(up_reader, writer),
                                 return_exceptions=True)
        finally:
            self._open -= {writer, up_writer}

    def _count(self, size: int) -> None:
        self.sent += size

    def cut(self) -> None:
        """Drop every connection through the proxy and refuse new ones until `restore`."""

        def drop() -> None:
            self._cut = True
            for writer in list(self._open):
                writer.transport.abort()

        self._call(drop)

    def restore(self) -> None:
        self._call(lambda: setattr(self, "_cut", False))

    def _call(self, fn: Any) -> None:
        done = threading.Event()

        def run() -> None:
            fn()
            done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(10)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)


async def _pipe(reader: asyncio.StreamReader, writer: Any, count: Any = None) -> None:
    try:
        while data := await reader.read(65536):
            if count is not None:
                count(len(data))
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
