"""A TCP relay in front of PostgreSQL that can lose one COMMIT's acknowledgement.

The commit happens on the server; the client sees its connection drop and does not
learn the outcome (a network blip, a failover, a restarted pooler). Armed with
:meth:`AckLosingRelay.lose_next_file_commit`, the relay forwards the next ``COMMIT`` of
a transaction that registered a DuckLake data file, waits until PostgreSQL has
committed it, and closes both sockets instead of passing the reply on.

:meth:`AckLosingRelay.lose_next_copy_commit` does the same to the next transaction that
ran a ``COPY`` (a staged flush, :mod:`meterline.lakestage`).

Only the frontend side of the wire protocol is parsed: the untyped start-up messages
(an SSL or GSS request first, then the protocol 3.0 start-up), then typed messages; a
simple ``Q`` query of ``COMMIT`` is what is looked for.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

_PROTOCOL_3 = 196608
_COMMITTED_AFTER_S = 0.3
"""How long the relay waits for PostgreSQL to commit before it cuts the connection."""


class AckLosingRelay:
    def __init__(self, pg_port: int) -> None:
        self.pg_port = pg_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._armed = threading.Event()
        self._armed_copy = threading.Event()
        self.lost = 0
        """Acknowledgements lost so far."""
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_next_file_commit(self) -> None:
        self._armed.set()

    def lose_next_copy_commit(self) -> None:
        """The same for the next transaction that ran a ``COPY`` (a staged flush)."""
        self._armed_copy.set()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        server = socket.create_connection(("127.0.0.1", self.pg_port))
        cut = threading.Event()
        threading.Thread(target=_pump, args=(server, client, cut), daemon=True).start()
        buffer, started, wrote_file, copied = b"", False, False, False
        try:
            while data := client.recv(65536):
                buffer += data
                out = b""
                while True:
                    if not started:  # length, code, rest: no type byte yet
                        if len(buffer) < 8 or len(buffer) < struct.unpack("!I", buffer[:4])[0]:
                            break
                        size, code = struct.unpack("!II", buffer[:8])
                        message, buffer = buffer[:size], buffer[size:]
                        started = code == _PROTOCOL_3
                        out += message
                        continue
                    if len(buffer) < 5 or len(buffer) < 1 + struct.unpack("!I", buffer[1:5])[0]:
                        break
                    size = 1 + struct.unpack("!I", buffer[1:5])[0]
                    message, buffer = buffer[:size], buffer[size:]
                    out += message
                    if b"ducklake_data_file" in message and b"INSERT" in message.upper():
                        wrote_file = True
                    if message[:1] in (b"Q", b"P") and b"COPY " in message.upper():
                        copied = True
                    if message[:1] == b"Q" and message[5:].strip(b"\0 ;").upper() == b"COMMIT":
                        armed = self._armed if wrote_file else self._armed_copy if copied else None
                        if armed is not None and armed.is_set():
                            armed.clear()
                            self.lost += 1
                            cut.set()  # the reply is not passed on
                            server.sendall(out)
                            time.sleep(_COMMITTED_AFTER_S)
                            return
                        wrote_file = copied = False
                if out:
                    server.sendall(out)
        except OSError:
            pass
        finally:
            _close(server, client)


def _pump(source: socket.socket, sink: socket.socket, cut: threading.Event) -> None:
    try:
        while (data := source.recv(65536)) and not cut.is_set():
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _close(source, sink)


def _close(*sockets: socket.socket) -> None:
    for s in sockets:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()
