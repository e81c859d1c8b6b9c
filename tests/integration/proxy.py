"""FaultProxy: a threaded TCP relay on 127.0.0.1 that breaks connections on
purpose, for the fault tests (../../../shared/TESTING.md, "Fault proxy").

It relays bytes as they are (TLS passes through untouched: the client still
verifies the server's certificate, which names 127.0.0.1), so a mount is
pointed at it with
    Mount(server, ..., url="imaps://alice@127.0.0.1:%d" % proxy.port)

Modes (set_mode(), switchable while it runs):
    pass        relay everything
    cut         close each connection once it has relayed `cut_after`
                server->client bytes (the TLS handshake counts)
    random      the same with a byte count drawn per connection from
                random.Random(seed).randint(lo, hi)
    stall       accept, forward nothing (new connections), and hold every
                byte of the connections already open until the mode changes
    refuse      accept and reset at once (RST), before any byte
A connection keeps the plan it was given when it was accepted (its cut
budget), except that stall holds every open connection while it lasts.

Every connection is logged (Conn records in .log): when it was accepted,
bytes each way, and how it ended ("client closed", "server closed", "cut",
"stalled", "refused", "proxy closed", "error: ..."). connections_since(t),
per_minute() and max_per_minute() count accepted connections (each one is a
login for convoyfs); log_text() prints the log, one line per connection.
"""

import contextlib
import random
import selectors
import socket
import threading
import time

MODES = ("pass", "cut", "random", "stall", "refuse")


class Conn:
    """One accepted connection, as the log keeps it."""

    def __init__(self, n, mode, budget):
        self.n = n
        self.accepted = time.time()
        self.accepted_mono = time.monotonic()
        self.mode = mode
        self.budget = budget  # server->client bytes before the cut, or None
        self.up = 0  # client -> server bytes relayed
        self.down = 0  # server -> client bytes relayed
        self.ended = None
        self.how = None
        self.cut_now = False  # set by FaultProxy.cut_open()

    def open(self):
        return self.how is None

    def __repr__(self):
        return "<Conn %d %s up=%d down=%d %s>" % (self.n, self.mode, self.up, self.down,
                                                  self.how or "open")


class FaultProxy:
    def __init__(self, target_host, target_port, mode="pass", cut_after=60_000,
                 random_range=(4_000, 400_000), seed=1, listen_host="127.0.0.1"):
        self.target = (target_host, target_port)
        self.lock = threading.Lock()
        self.log = []
        self.rng = random.Random(seed)
        self.mode = "pass"
        self.cut_after = cut_after
        self.random_range = random_range
        self.set_mode(mode)
        self.stopping = False
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((listen_host, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.host = listen_host
        self.port = self.sock.getsockname()[1]
        self.threads = []
        self._accepter = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self._accepter.start()

    # -- control ---------------------------------------------------------------

    def set_mode(self, mode, cut_after=None, random_range=None, seed=None):
        """Switch mode; optional new parameters for cut/random."""
        if mode not in MODES:
            raise ValueError("unknown mode %r (one of %s)" % (mode, ", ".join(MODES)))
        with self.lock:
            if cut_after is not None:
                self.cut_after = cut_after
            if random_range is not None:
                self.random_range = random_range
            if seed is not None:
                self.rng = random.Random(seed)
            self.mode = mode

    def passing(self):
        self.set_mode("pass")

    def cut(self, after=None):
        self.set_mode("cut", cut_after=after)

    def random_cuts(self, lo=None, hi=None, seed=None):
        rr = (lo, hi) if lo is not None else None
        self.set_mode("random", random_range=rr, seed=seed)

    def stall(self):
        self.set_mode("stall")

    def refuse(self):
        self.set_mode("refuse")

    def cut_open(self):
        """Cut every connection that is open now."""
        with self.lock:
            for c in self.log:
                if c.open():
                    c.cut_now = True

    def url(self, user="alice", scheme="imaps"):
        return "%s://%s@%s:%d" % (scheme, user, self.host, self.port)

    # -- the log -----------------------------------------------------------------

    def connections(self):
        with self.lock:
            return list(self.log)

    def connections_since(self, t):
        """Connections accepted at or after t (a time.time() value)."""
        return [c for c in self.connections() if c.accepted >= t]

    def open_connections(self):
        return [c for c in self.connections() if c.open()]

    def per_minute(self, since=None):
        """{minute index from the first connection (or since): connections accepted}."""
        conns = self.connections() if since is None else self.connections_since(since)
        if not conns:
            return {}
        t0 = since if since is not None else conns[0].accepted
        out = {}
        for c in conns:
            k = int((c.accepted - t0) // 60)
            out[k] = out.get(k, 0) + 1
        return out

    def max_per_minute(self, since=None, window=60.0):
        """The most connections accepted in any sliding window of `window` seconds."""
        conns = self.connections() if since is None else self.connections_since(since)
        times = sorted(c.accepted for c in conns)
        best, j = 0, 0
        for i, t in enumerate(times):
            while times[j] < t - window + 1e-9:
                j += 1
            best = max(best, i - j + 1)
        return best

    def log_text(self):
        conns = self.connections()
        if not conns:
            return "(no connections)\n"
        t0 = conns[0].accepted
        lines = []
        for c in conns:
            lines.append("#%-4d +%8.3fs %-6s budget=%-7s up=%-8d down=%-9d %s%s" % (
                c.n, c.accepted - t0, c.mode, c.budget if c.budget is not None else "-",
                c.up, c.down, c.how or "open",
                (" after %.2fs" % (c.ended - c.accepted)) if c.ended else ""))
        return "\n".join(lines) + "\n"

    def bytes_down(self):
        return sum(c.down for c in self.connections())

    # -- relaying ------------------------------------------------------------------

    def _accept(self):
        n = 0
        while not self.stopping:
            try:
                client, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self.stopping:
                    break
                time.sleep(0.05)
                continue
            n += 1
            with self.lock:
                mode = self.mode
                budget = None
                if mode == "cut":
                    budget = self.cut_after
                elif mode == "random":
                    budget = self.rng.randint(*self.random_range)
                conn = Conn(n, mode, budget)
                self.log.append(conn)
            if mode == "refuse":
                self._reset(client)
                self._end(conn, "refused")
                continue
            t = threading.Thread(target=self._session, args=(client, conn),
                                 name="proxy-conn-%d" % n, daemon=True)
            with self.lock:
                self.threads = [x for x in self.threads if x.is_alive()] + [t]
            t.start()

    @staticmethod
    def _reset(s):
        with contextlib.suppress(OSError):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        with contextlib.suppress(OSError):
            s.close()

    def _end(self, conn, how):
        with self.lock:
            if conn.how is None:
                conn.how = how
                conn.ended = time.time()

    def _stalled(self):
        return self.mode == "stall" and not self.stopping

    def _send(self, sock, data):
        """sendall that gives up when the proxy stops."""
        view = memoryview(data)
        while view:
            if self.stopping:
                raise OSError("proxy closed")
            try:
                k = sock.send(view)
            except (socket.timeout, BlockingIOError):
                continue
            view = view[k:]

    def _session(self, client, conn):
        upstream = None
        try:
            client.settimeout(0.5)
            if conn.mode == "stall":
                # hold the client: read and drop nothing, answer nothing
                while not self.stopping:
                    try:
                        if client.recv(1, socket.MSG_PEEK) == b"":
                            break
                    except socket.timeout:
                        continue
                    time.sleep(0.1)
                self._end(conn, "stalled" if not self.stopping else "proxy closed (stalled)")
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError as e:
                self._end(conn, "error: upstream %s" % e)
                return
            upstream.settimeout(0.5)
            sel = selectors.DefaultSelector()
            sel.register(client, selectors.EVENT_READ, "up")
            sel.register(upstream, selectors.EVENT_READ, "down")
            try:
                while True:
                    if self.stopping:
                        self._end(conn, "proxy closed")
                        return
                    if conn.cut_now:
                        self._end(conn, "cut (cut_open)")
                        return
                    if self._stalled():
                        time.sleep(0.05)
                        continue
                    for key, _ in sel.select(0.2):
                        src = key.fileobj
                        try:
                            data = src.recv(65536)
                        except socket.timeout:
                            continue
                        if not data:
                            self._end(conn, "client closed" if key.data == "up" else "server closed")
                            return
                        if key.data == "up":
                            self._send(upstream, data)
                            with self.lock:
                                conn.up += len(data)
                        else:
                            cut = False
                            if conn.budget is not None and conn.down + len(data) >= conn.budget:
                                data = data[:conn.budget - conn.down]
                                cut = True
                            if data:
                                self._send(client, data)
                            with self.lock:
                                conn.down += len(data)
                            if cut:
                                self._end(conn, "cut")
                                return
            finally:
                sel.close()
        except OSError as e:
            self._end(conn, "proxy closed" if self.stopping else "error: %s" % e)
        finally:
            for s in (client, upstream):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                    with contextlib.suppress(OSError):
                        s.close()

    # -- lifecycle --------------------------------------------------------------------

    def close(self, timeout=10):
        """Stop accepting, end every connection, join the threads."""
        if self.stopping:
            return
        self.stopping = True
        with contextlib.suppress(OSError):
            self.sock.close()
        self._accepter.join(timeout)
        with self.lock:
            threads = list(self.threads)
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        alive = [t.name for t in threads if t.is_alive()] + (
            [self._accepter.name] if self._accepter.is_alive() else [])
        if alive:
            raise RuntimeError("proxy threads still running: %s" % alive)

    stop = close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
