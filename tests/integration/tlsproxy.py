"""A TLS-terminating IMAP relay on 127.0.0.1 that can rewrite the
server's reply lines: it answers convoyfs with the server's own
certificate (issued for 127.0.0.1 by the test CA), speaks TLS to the
server, and passes every server line through rewrite(line) -> bytes
(None drops it). For what a passthrough proxy cannot do: drop a folder
from one LIST reply, or make a reply unparsable. It also keeps every
line the client sent, per connection (sent_lines()), for servers that
have no rawlog of their own. It reads lines, so it cannot relay a
compressed session: COMPRESS=DEFLATE is taken out of every capability
list it passes on."""

import contextlib
import re
import socket
import ssl
import threading
import time


class LineProxy:
    def __init__(self, server, rewrite=None):
        self.server = server
        self.rewrite = rewrite
        self.accepted = []  # monotonic time of each connection
        self.sent = []  # (connection number, monotonic time, line) from the client
        self._lock = threading.Lock()
        self._conns = []
        self._stop = False
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_ctx.load_cert_chain(server.cert, server.key)
        self.client_ctx = ssl.create_default_context(cafile=server.ca_file)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def url(self):
        return "imaps://%s@127.0.0.1:%d" % (self.server.user, self.port)

    def _serve(self):
        while not self._stop:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                continue
            with self._lock:
                self.accepted.append(time.monotonic())
            threading.Thread(target=self._session, args=(raw,), daemon=True).start()

    def _session(self, raw):
        try:
            raw.settimeout(60)
            down = self.server_ctx.wrap_socket(raw, server_side=True)
            up = self.client_ctx.wrap_socket(
                socket.create_connection(("127.0.0.1", self.server.port), timeout=60),
                server_hostname="127.0.0.1")
        except OSError:
            with contextlib.suppress(OSError):
                raw.close()
            return
        # the timeout was for the handshakes: a session may rightly sit
        # silent for minutes (IDLE, an idle fetcher), and close() ends
        # the reads by shutting the sockets down
        down.settimeout(None)
        up.settimeout(None)
        with self._lock:
            self._conns += [down, up]
            n = len(self.accepted)

        def record(line):
            with self._lock:
                self.sent.append((n, time.monotonic(), line))
            return line
        t = threading.Thread(target=self._pump, args=(down, up, record), daemon=True)
        t.start()
        self._pump(up, down, self._server_line)
        t.join(5)

    def _server_line(self, line):
        if b"CAPABILITY" in line.upper():
            line = re.sub(rb"(?i) COMPRESS=DEFLATE(?=[ \]\r])", b"", line)
        return self.rewrite(line) if self.rewrite is not None else line

    def _pump(self, src, dst, rewrite):
        f = src.makefile("rb")
        try:
            while True:
                line = f.readline()
                if not line:
                    break
                if rewrite is not None:
                    line = rewrite(line)
                    if line is None:
                        continue
                dst.sendall(line)
        except (OSError, ValueError):
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def sent_lines(self, since=0.0):
        """{connection number: [line, ...]} the client sent after since
        (a time.monotonic() value), decoded, without CRLF."""
        out = {}
        with self._lock:
            rows = list(self.sent)
        for n, t, line in rows:
            if t >= since:
                out.setdefault(n, []).append(line.decode("utf-8", "replace").rstrip("\r\n"))
        return out

    def logins_between(self, t0, t1):
        with self._lock:
            return len([t for t in self.accepted if t0 <= t <= t1])

    def close(self):
        self._stop = True
        with contextlib.suppress(OSError):
            self.sock.close()
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
        self.thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
