"""Thin asyncio I/O for the simulated NCP: a TCP server (`socket://127.0.0.1:PORT`) and a pty (serial path).

All protocol work happens in the sans-I/O layers (`ash.AshNcpLink`, `ncp.SimNcp`); this module only moves
bytes between them and a transport, and arms one timer for the ASH retransmission deadline.

Like zigbeed and network-attached NCP bridges, the TCP form resets the NCP when a host connects and announces
it with RSTACK (so bellows skips its own reset wait); one host at a time, a new connection replaces the old
one. The pty form behaves like a USB-serial NCP that was already running: it waits for the host's RST.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tty

from adapters.zigbee.sim.ncp.ash import AshNcpLink, ResetCode
from adapters.zigbee.sim.ncp.ncp import SimNcp

LOGGER = logging.getLogger(__name__)


class NcpServer:
    """Serves one SimNcp over TCP and/or a pty."""

    def __init__(self, ncp: SimNcp, *, reset_on_connect: bool = True) -> None:
        self.ncp = ncp
        self.reset_on_connect = reset_on_connect
        self._loop = asyncio.get_running_loop()
        self.link = AshNcpLink(self._loop.time, on_output=self._output_ready)
        self.link.power_on(announce=False)  # booted before anyone connected
        ncp.on_frames = self._pump_callbacks
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pty_master: int | None = None
        self._pty_slave: int | None = None
        self._pty_out = bytearray()
        self._pty_writing = False
        self._timer: asyncio.TimerHandle | None = None
        self._flush_scheduled = False
        self.connections = 0
        self.path = ""

    # ------------------------------------------------------------------ transports
    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._server = await asyncio.start_server(self._client, host, port)
        port = self._server.sockets[0].getsockname()[1]
        self.path = f"socket://{host}:{port}"
        return self.path

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:
            self._writer.close()  # one host at a time
        self._writer = writer
        self.connections += 1
        if self.reset_on_connect:
            self.reboot(ResetCode.POWER_ON)
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                if self._writer is writer:
                    self.feed(data)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()

    def open_pty(self) -> str:
        """A pty whose slave end is the NCP's 'serial port' path."""
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo or line discipline between host and NCP
        os.set_blocking(master, False)
        self._pty_master, self._pty_slave = master, slave  # keeping the slave open: no EIO between hosts
        self._loop.add_reader(master, self._pty_readable)
        self.path = os.ttyname(slave)
        return self.path

    def _pty_readable(self) -> None:
        assert self._pty_master is not None
        try:
            data = os.read(self._pty_master, 4096)
        except (BlockingIOError, OSError):
            return
        if data:
            self.feed(data)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        if self._pty_master is not None:
            self._loop.remove_reader(self._pty_master)
            if self._pty_writing:
                self._loop.remove_writer(self._pty_master)
            os.close(self._pty_master)
            self._pty_master = None
        if self._pty_slave is not None:
            os.close(self._pty_slave)
            self._pty_slave = None
        self.ncp.on_frames = None

    # ------------------------------------------------------------------ glue
    def feed(self, data: bytes) -> None:
        link = self.link
        link.receive(data)
        if link.reset_requested:
            self.ncp.reset()
            link.reset_done(ResetCode.SOFTWARE)
        for frame in link.take_frames():
            for out in self.ncp.handle(frame):
                link.send(out)
        self._pump_callbacks()
        link.flush()
        self._rearm()

    def _pump_callbacks(self) -> None:
        for frame in self.ncp.take_frames():
            self.link.send(frame)
        self._rearm()

    def reboot(self, code: int = ResetCode.WATCHDOG) -> None:
        """The NCP resets on its own (watchdog, power glitch): RAM state lost, RSTACK sent unprompted."""
        self.ncp.reset()
        self.link.power_on(code, announce=True)

    def _output_ready(self) -> None:
        # several frames are often produced in one step: write them together once the step is over
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        data = self.link.take_output()
        if not data:
            return
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(data)
        elif self._pty_master is not None:
            self._pty_out += data
            self._pty_drain()

    def _pty_drain(self) -> None:
        """Write what the pty takes now; keep the rest until it is writable (a UART never drops bytes)."""
        master = self._pty_master
        if master is None:
            return
        try:
            written = os.write(master, self._pty_out) if self._pty_out else 0
        except BlockingIOError:
            written = 0
        except OSError as exc:  # EIO: nobody holds the slave; the bytes are gone, as on an unplugged line
            LOGGER.debug("pty write failed: %s", exc)
            written = len(self._pty_out)
        del self._pty_out[:written]
        if self._pty_out and not self._pty_writing:
            self._pty_writing = True
            self._loop.add_writer(master, self._pty_drain)
        elif not self._pty_out and self._pty_writing:
            self._pty_writing = False
            self._loop.remove_writer(master)

    def _rearm(self) -> None:
        deadline = self.link.next_deadline()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.link.poll()
        self._rearm()
