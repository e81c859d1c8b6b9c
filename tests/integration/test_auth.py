"""Authentication: LOGIN by default, AUTHENTICATE PLAIN with -o auth=plain.

Dovecot's rawlog starts after login, so a small TLS relay between convoyfs
and Dovecot records what the client sent before it."""

import os
import socket
import ssl
import threading
import time

import harness


class RecordingRelay:
    """Terminates TLS with the server's own certificate, opens TLS to
    Dovecot, and keeps every byte the client sent. Setting .stall holds
    every byte in both directions (a server that stops answering with the
    connection still open)."""

    def __init__(self, dovecot):
        self.dovecot = dovecot
        self.sent = bytearray()
        self.lock = threading.Lock()
        self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_ctx.load_cert_chain(dovecot.cert, dovecot.key)
        self.client_ctx = ssl.create_default_context(cafile=dovecot.ca_file)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.stall = False
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        while not self.stopping:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                continue
            t = threading.Thread(target=self._session, args=(raw,), daemon=True)
            t.start()

    def _pump(self, src, dst, record):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if record:
                    with self.lock:
                        self.sent += data
                while self.stall and not self.stopping:
                    time.sleep(0.05)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _session(self, raw):
        try:
            raw.settimeout(30)
            client = self.server_ctx.wrap_socket(raw, server_side=True)
            up = socket.create_connection(("127.0.0.1", self.dovecot.port), timeout=30)
            upstream = self.client_ctx.wrap_socket(up, server_hostname="127.0.0.1")
        except (OSError, ssl.SSLError):
            raw.close()
            return
        t = threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True)
        t.start()
        self._pump(client, upstream, True)
        t.join(30)
        client.close()
        upstream.close()

    def commands(self):
        with self.lock:
            return [l.split(b" ", 2)[1].upper() for l in bytes(self.sent).split(b"\r\n")
                    if len(l.split(b" ", 2)) > 1]

    def close(self):
        self.stopping = True
        self.sock.close()


def run_through_relay(dovecot_factory, mount, auth):
    d = dovecot_factory()
    d.append("INBOX", harness.genmail.gen_messages(1, 5).__next__()[0])
    relay = RecordingRelay(d)
    try:
        opts = {"auth": auth} if auth else {}
        m = mount(d, url="imaps://alice@127.0.0.1:%d" % relay.port, options=opts)
        assert len(os.listdir(os.path.join(m.path, "INBOX"))) == 1
        m.stop()
        return relay.commands(), bytes(relay.sent)
    finally:
        relay.close()


def test_login_is_the_default(dovecot_factory, mount):
    cmds, sent = run_through_relay(dovecot_factory, mount, None)
    assert b"LOGIN" in cmds
    assert b"AUTHENTICATE" not in cmds


def test_auth_plain_uses_authenticate(dovecot_factory, mount):
    cmds, sent = run_through_relay(dovecot_factory, mount, "plain")
    assert b"AUTHENTICATE" in cmds, cmds
    assert b"LOGIN" not in cmds, cmds
    assert b"PLAIN" in sent


def test_auth_plain_wrong_password_is_one_clear_line(dovecot_factory, tmp_path, convoyfs_bin):
    import subprocess
    d = dovecot_factory()
    mp = tmp_path / "mnt"
    mp.mkdir()
    r = subprocess.run([convoyfs_bin, "-f", "-o",
                        "auth=plain,cafile=%s,password_command=echo wrong,cache_dir=%s,timeout=10"
                        % (d.ca_file, tmp_path / "cache"), d.url(), str(mp)],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "refused" in lines[0], r.stderr
    assert not harness.mounted(str(mp))
