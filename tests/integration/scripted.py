"""ScriptedImap: a small IMAP server on 127.0.0.1 (TLS from a throwaway CA,
or plain) whose replies a test can bend: it serves one account of folders
and messages correctly enough for convoyfs's sync and body fetches, and a
subclass or a hook replaces what it says about one message. For what no
real server does on purpose: a BODY[] of another UID, a BODY[HEADER]
answering BODY[], two bodies in one reply, an RFC822.SIZE that lies.

It is a test double for the parts of IMAP4rev1 convoyfs sends without
extensions (CAPABILITY, LOGIN, LIST, STATUS, EXAMINE/SELECT, FETCH and
UID FETCH, UID SEARCH, NOOP, LOGOUT), and IDLE when `caps` names it,
during which push() sends what a test wants said; anything else gets
BAD. A server
whose `caps` name AUTH=XOAUTH2 or AUTH=OAUTHBEARER (and SASL-IR) also
takes AUTHENTICATE with that mechanism, the bearer token being
`password`; it checks the client's whole SASL response and answers a
wrong one with the mechanism's error challenge (see _authenticate).
"""

import base64
import contextlib
import datetime as dt
import json
import os
import re
import shlex
import socket
import ssl
import tempfile
import threading

import harness

CAPS = "IMAP4rev1"


class Message:
    def __init__(self, uid, data, date=None, flags=()):
        self.uid = uid
        self.data = data
        self.date = date or dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
        self.flags = list(flags)
        self.size = len(data)  # what RFC822.SIZE says; a test may lie with it


def literal(data):
    return b"{%d}\r\n" % len(data) + data


def imap_date(t):
    return t.strftime("%d-%b-%Y %H:%M:%S +0000").encode()


def header_fields(data, names):
    """The header lines of data whose field names are in names, as
    BODY[HEADER.FIELDS (...)] returns them, with the empty line."""
    head = data.split(b"\r\n\r\n", 1)[0]
    out, keep = [], False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().upper()
        keep = name in names
        if keep:
            out.append(line)
    return b"\r\n".join(out) + b"\r\n\r\n"


def parse_set(text, top):
    """[(a, b)] of an IMAP set; '*' is top."""
    out = []
    for part in text.split(","):
        a, _, b = part.partition(":")
        a = top if a == "*" else int(a)
        b = a if not b else (top if b == "*" else int(b))
        out.append((min(a, b), max(a, b)))
    return out


def in_set(n, ranges):
    return any(a <= n <= b for a, b in ranges)


class ScriptedImap:
    """Folders {name: [Message]} served to user alice over TLS (imaps) and
    plain. Subclass and override body_reply() / meta_reply() to lie."""

    user = "alice"
    password = "s3cret-Pw"
    caps = CAPS  # what the greeting and CAPABILITY say
    # the error challenge's JSON for a refused token, per mechanism
    oauth_errors = {
        "XOAUTH2": {"status": "401", "schemes": "bearer",
                    "scope": "https://mail.google.com/"},
        "OAUTHBEARER": {"status": "invalid_token", "scope": "imap",
                        "openid-configuration":
                            "https://auth.example.test/.well-known/openid-configuration"},
    }

    def __init__(self, folders=None, uidvalidity=42, say_uidnext=True):
        self.folders = folders if folders is not None else {"INBOX": []}
        self.uidvalidity = uidvalidity
        self.say_uidnext = say_uidnext  # False: UIDNEXT left out everywhere
        self.lock = threading.Lock()
        self.commands = []  # every line received, decoded
        self.idlers = []  # the files of sessions in IDLE now
        # each AUTHENTICATE: (mechanism, sent as initial response,
        # decoded response, the answer to the error challenge or None)
        self.authentications = []
        self.dir = tempfile.mkdtemp(prefix="convoyfs-scripted-")
        os.chmod(self.dir, 0o755)
        self.ca = harness.CA(self.dir, "ca")
        self.ca_file = self.ca.cert
        self.cert, self.key = self.ca.issue("server", ["localhost"], ["127.0.0.1"])
        self.password_file = os.path.join(self.dir, "password")
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(self.cert, self.key)
        self._stop = False
        self._local = threading.local()  # per session
        self._socks = []
        self._threads = []
        self.port = self._listen(tls=True)
        self.plain_port = self._listen(tls=False)

    # -- what harness.Mount asks of a server ------------------------------------

    def password_command(self, path=None):
        return "cat " + shlex.quote(path or self.password_file)

    def url(self, host="127.0.0.1", scheme="imaps"):
        port = self.port if scheme == "imaps" else self.plain_port
        return "%s://%s@%s:%d" % (scheme, self.user, host, port)

    def add(self, folder, data, date=None, flags=(), uid=None):
        with self.lock:
            box = self.folders.setdefault(folder, [])
            uid = uid or (box[-1].uid if box else 0) + 1
            m = Message(uid, data, date, flags)
            box.append(m)
            return m

    def push(self, data):
        """Write data (untagged lines) to every session in IDLE now;
        returns how many there were."""
        with self.lock:
            for f in self.idlers:
                with contextlib.suppress(OSError, ValueError):
                    f.write(data)
                    f.flush()
            return len(self.idlers)

    # -- replies a test may bend ---------------------------------------------------

    def body_reply(self, folder, seq, m):
        """The FETCH response lines answering UID FETCH uid (UID BODY.PEEK[])."""
        return [b"* %d FETCH (UID %d BODY[] " % (seq, m.uid) + literal(m.data) + b")\r\n"]

    def meta_reply(self, folder, seq, m, items):
        """The FETCH response (bytes, or a generator of bytes) answering a
        metadata FETCH for one message."""
        return [b"* %d FETCH (" % seq + b" ".join(self.meta_items(folder, seq, m, items)) +
                b")\r\n"]

    def greeting(self):
        """The greeting: bytes, or a generator of bytes (a greeting that
        never ends). Return None to say nothing at all."""
        return b"* OK [CAPABILITY %s] scripted server ready\r\n" % self.caps.encode()

    def list_reply(self):
        """The LIST response lines (bytes or generators of bytes)."""
        with self.lock:
            names = list(self.folders)
        return [b'* LIST (\\HasNoChildren) "/" "%s"\r\n' % n.encode() for n in names]

    def uidvalidity_for(self, cmd, name):
        """The UIDVALIDITY told for folder name in the reply to cmd
        (EXAMINE, SELECT or STATUS)."""
        return self.uidvalidity

    def extra_untagged(self, cmd):
        """Untagged lines (bytes or generators) sent before the tagged
        reply to cmd, after what the command itself says."""
        return []

    def meta_items(self, folder, seq, m, items):
        """The items of one FETCH response for the metadata convoyfs asks."""
        out = [b"UID %d" % m.uid]
        if "FLAGS" in items:
            out.append(b"FLAGS (" + " ".join(m.flags).encode() + b")")
        if "INTERNALDATE" in items:
            out.append(b'INTERNALDATE "' + imap_date(m.date) + b'"')
        if "RFC822.SIZE" in items:
            out.append(b"RFC822.SIZE %d" % m.size)
        hf = re.search(r"BODY\.PEEK\[HEADER\.FIELDS \(([^)]*)\)\]", items)
        if hf:
            names = hf.group(1).upper().encode().split()
            out.append(b"BODY[HEADER.FIELDS (" + b" ".join(names) + b")] " +
                       literal(header_fields(m.data, names)))
        return out

    # -- serving -------------------------------------------------------------------

    def _listen(self, tls):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        s.settimeout(0.2)
        self._socks.append(s)
        t = threading.Thread(target=self._accept, args=(s, tls), daemon=True)
        t.start()
        self._threads.append(t)
        return s.getsockname()[1]

    def _accept(self, s, tls):
        while not self._stop:
            try:
                c, _ = s.accept()
            except OSError:
                continue
            threading.Thread(target=self._session, args=(c, tls), daemon=True).start()

    def _session(self, raw, tls):
        raw.settimeout(60)
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True) if tls else raw
        except (OSError, ssl.SSLError):
            raw.close()
            return
        with contextlib.closing(conn):
            f = conn.makefile("rwb")
            try:
                if self._write_all(f, [self.greeting()]):
                    return
                f.flush()
                # the port the client dialed, which OAUTHBEARER names
                self._local.port = self.port if tls else self.plain_port
                self._serve(f)
            except (OSError, ValueError, ssl.SSLError):
                pass

    def _serve(self, f):
        selected = None
        for line in f:
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            with self.lock:
                self.commands.append(text)
            parts = text.split(" ", 2)
            if len(parts) < 2:
                continue
            tag, cmd = parts[0].encode(), parts[1].upper()
            args = parts[2] if len(parts) > 2 else ""
            out = []
            if cmd == "UID" and args:
                sub, _, args = args.partition(" ")
                cmd = "UID " + sub.upper()
            if cmd == "CAPABILITY":
                out.append(b"* CAPABILITY %s\r\n" % self.caps.encode())
            elif cmd == "LOGIN":
                user, _, pw = args.partition(" ")
                if user.strip('"') != self.user or pw.strip('"') != self.password:
                    f.write(tag + b" NO [AUTHENTICATIONFAILED] no\r\n")
                    f.flush()
                    continue
            elif cmd == "AUTHENTICATE" and \
                    "AUTH=" + args.split(" ", 1)[0].upper() in self.caps.upper().split():
                if not self._authenticate(f, tag, args, self._local.port):
                    continue
            elif cmd == "NOOP":
                pass
            elif cmd == "IDLE" and "IDLE" in self.caps.upper().split():
                f.write(b"+ idling\r\n")
                f.flush()
                with self.lock:
                    self.idlers.append(f)
                try:
                    done = f.readline()
                finally:
                    with self.lock:
                        self.idlers.remove(f)
                        self.commands.append(done.decode("utf-8", "replace").rstrip("\r\n"))
                if not done:
                    return
                f.write(tag + b" OK idle done\r\n")
                f.flush()
                continue
            elif cmd == "LOGOUT":
                f.write(b"* BYE bye\r\n" + tag + b" OK done\r\n")
                f.flush()
                return
            elif cmd == "LIST":
                out += self.list_reply()
            elif cmd in ("STATUS", "EXAMINE", "SELECT") and \
                    self.folders.get(args.split(" ", 1)[0].strip('"')) is None:
                f.write(tag + b" NO no such folder\r\n")
                f.flush()
                continue
            elif cmd == "STATUS":
                name = args.split(" ", 1)[0].strip('"')
                out.append(self._status(name, self.folders[name]))
            elif cmd in ("EXAMINE", "SELECT"):
                name = args.split(" ", 1)[0].strip('"')
                box = self.folders[name]
                selected = name
                out += [b"* %d EXISTS\r\n" % len(box), b"* 0 RECENT\r\n",
                        b"* FLAGS (\\Seen \\Flagged \\Deleted \\Answered \\Draft)\r\n",
                        b"* OK [UIDVALIDITY %d] ok\r\n" % self.uidvalidity_for(cmd, name)]
                if self.say_uidnext:
                    out.append(b"* OK [UIDNEXT %d] ok\r\n" % ((box[-1].uid if box else 0) + 1))
            elif cmd in ("FETCH", "UID FETCH") and selected:
                out += self._fetch(selected, args, cmd == "UID FETCH")
            elif cmd == "UID SEARCH" and selected:
                out.append(self._search(selected, args))
            else:
                f.write(tag + b" BAD not here\r\n")
                f.flush()
                continue
            if self._write_all(f, out + self.extra_untagged(cmd)):
                return
            f.write(tag + b" OK done\r\n")
            f.flush()

    def oauth_expected(self, mech, port, token=None):
        """The one SASL response of mech this server takes."""
        token = self.password if token is None else token
        if mech == "XOAUTH2":
            return "user=%s\x01auth=Bearer %s\x01\x01" % (self.user, token)
        return "n,a=%s,\x01host=127.0.0.1\x01port=%d\x01auth=Bearer %s\x01\x01" % (
            self.user.replace("=", "=3D").replace(",", "=2C"), port, token)

    def _authenticate(self, f, tag, args, port):
        """AUTHENTICATE XOAUTH2 or OAUTHBEARER: True when the client
        is in (the caller sends the tagged OK); else the tagged NO or
        BAD has been sent. The initial
        response counts only where SASL-IR is offered (RFC 4959)."""
        mech, _, initial = args.partition(" ")
        mech = mech.upper()
        ir = bool(initial) and "SASL-IR" in self.caps.upper().split()
        if initial and not ir:
            f.write(tag + b" BAD initial response without SASL-IR\r\n")
            f.flush()
            return False
        if not ir:
            f.write(b"+ \r\n")
            f.flush()
            initial = f.readline().decode("utf-8", "replace").rstrip("\r\n")
            with self.lock:
                self.commands.append(initial)
        try:
            got = base64.b64decode(initial, validate=True).decode("utf-8", "replace")
        except ValueError:
            f.write(tag + b" BAD not base64\r\n")
            f.flush()
            return False
        if got == self.oauth_expected(mech, port):
            with self.lock:
                self.authentications.append((mech, ir, got, None))
            return True
        # the error challenge: XOAUTH2 wants an empty line back, RFC 7628
        # §3.2.3 a single %x01 ("AQ==")
        challenge = base64.b64encode(json.dumps(self.oauth_errors[mech]).encode())
        f.write(b"+ " + challenge + b"\r\n")
        f.flush()
        answer = f.readline().decode("utf-8", "replace").rstrip("\r\n")
        with self.lock:
            self.commands.append(answer)
            self.authentications.append((mech, ir, got, answer))
        if answer != ("" if mech == "XOAUTH2" else "AQ=="):
            f.write(tag + b" BAD wrong answer to the error challenge\r\n")
        else:
            f.write(tag + b" NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n")
        f.flush()
        return False

    @staticmethod
    def _write_all(f, out):
        """Write each reply part; True when one ended the connection."""
        for o in out:
            if o is None:
                continue
            if isinstance(o, bytes):
                f.write(o)
                continue
            # a generator: a reply too big to hold, or one that
            # ends the connection (it raises ConnectionAbortedError)
            try:
                for chunk in o:
                    f.write(chunk)
            except ConnectionAbortedError:
                f.flush()
                return True
        return False

    def _status(self, name, box):
        nxt = (box[-1].uid if box else 0) + 1
        uv = self.uidvalidity_for("STATUS", name)
        if not self.say_uidnext:
            return b'* STATUS "%s" (MESSAGES %d UIDVALIDITY %d)\r\n' % (
                name.encode(), len(box), uv)
        return b'* STATUS "%s" (MESSAGES %d UIDNEXT %d UIDVALIDITY %d)\r\n' % (
            name.encode(), len(box), nxt, uv)

    def _fetch(self, folder, args, by_uid):
        with self.lock:
            box = list(self.folders[folder])
        spec, _, items = args.partition(" ")
        top = (box[-1].uid if box else 0) if by_uid else len(box)
        ranges = parse_set(spec, max(top, 1))
        out = []
        for seq, m in enumerate(box, 1):
            if not in_set(m.uid if by_uid else seq, ranges):
                continue
            if "BODY.PEEK[]" in items:
                out += self.body_reply(folder, seq, m)
            else:
                out += self.meta_reply(folder, seq, m, items)
        return out

    def _search(self, folder, args):
        with self.lock:
            box = list(self.folders[folder])
        top = box[-1].uid if box else 1
        m = re.search(r"UID (\S+)", args)
        ranges = parse_set(m.group(1), top) if m else [(1, top)]
        # dates are not looked at: a superset, which convoyfs diffs
        # against what it knows
        uids = [str(x.uid) for x in box if in_set(x.uid, ranges)]
        return b"* SEARCH" + ("".join(" " + u for u in uids)).encode() + b"\r\n"

    def close(self):
        self._stop = True
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()
        for t in self._threads:
            t.join(5)

    def cleanup(self):
        self.close()
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()
