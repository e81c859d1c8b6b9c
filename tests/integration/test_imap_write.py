"""The IMAP write primitives (sync/imap_write.c) against real servers,
driven by the test-only program imap_write_probe (built beside convoyfs
from tests/unit/test_imap_write_probe.c), with imaplib as the second
client that checks what the server really holds.

Each server kind of servers.KINDS runs the same story: CREATE, 50
pipelined APPENDs and one of 30 MB (memory stays bounded), refusals
before anything is sent, UID MOVE and UID COPY with COPYUID, STORE plain
and conditional with a conflict, UID EXPUNGE that spares other \\Deleted
mail, UID SEARCH HEADER, RENAME and DELETE of the selected folder. Where
a server lacks an extension the primitive must refuse without sending
(the reduced Dovecot's rawlog proves it). A Dovecot without LITERAL+
checks the synchronizing-literal path."""

import contextlib
import datetime
import hashlib
import json
import os
import re
import socket
import ssl
import subprocess
import threading

import pytest

import harness
import servers

CAP_CONDSTORE = 1 << 0
CAP_MOVE = 1 << 2
CAP_UIDPLUS = 1 << 3
CAP_LITERALPLUS = 1 << 10
OK, MSG_BAD, FOLDER_BAD, CONN_BAD = range(4)


@pytest.fixture(scope="session")
def probe_bin(convoyfs_bin):
    path = os.path.join(os.path.dirname(convoyfs_bin), "imap_write_probe")
    if not os.access(path, os.X_OK):
        pytest.skip("%s is not built" % path)
    return path


class Probe:
    """One imap_write_probe process: a logged-in connection of ours."""

    def __init__(self, binary, server):
        env = dict(os.environ, PROBE_HOST="127.0.0.1", PROBE_PORT=str(server.port),
                   PROBE_USER=server.user, PROBE_PASSWORD=server.password,
                   PROBE_CAFILE=server.ca_file)
        self.proc = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, text=True)
        first = self.proc.stdout.readline()
        if not first:
            err = self.proc.stderr.read()
            self.close()
            raise RuntimeError("imap_write_probe did not start: %s" % err)
        self.caps = json.loads(first)["caps"]

    def __call__(self, *fields):
        self.proc.stdin.write("\t".join(str(f) for f in fields) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "imap_write_probe died: %s" % self.stderr()
        return json.loads(line)

    def peak_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1))

    def stderr(self):
        if self.proc.poll() is None:
            return ""
        return self.proc.stderr.read()

    def close(self):
        """End the probe (LOGOUT on EOF), by its pid if it hangs; returns
        its stderr."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.stderr.read()


def sanitizer_free(text):
    return not re.search(r"==\d+==|runtime error:|LeakSanitizer", text)


def message(i, extra=b""):
    return (b"From: Probe <probe@example.org>\r\nTo: alice@example.org\r\n"
            b"Subject: write probe %d\r\nMessage-ID: <w%d@probe.example>\r\n"
            b"Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n\r\nbody of %d\r\n" % (i, i, i) + extra)


def write_spec(tmp_path, name, items):
    """items: (bytes, flags, date, zone); returns the spec file's path."""
    lines = []
    for k, (data, flags, date, zone) in enumerate(items):
        p = tmp_path / ("%s-%d.eml" % (name, k))
        p.write_bytes(data)
        lines.append("%s\t%s\t%d\t%d\n" % (p, flags, date, zone))
    spec = tmp_path / (name + ".spec")
    spec.write_text("".join(lines))
    return str(spec)


def folder_view(server, folder):
    """{uid: (Message-ID, set of flags, INTERNALDATE text)} as a second
    client sees folder (read-only)."""
    out = {}
    with server.session() as c:
        typ, data = c.select(harness.quote(servers.raw_name(folder)), readonly=True)
        assert typ == "OK", data
        if int(data[0] or 0) == 0:
            return out
        typ, data = c.uid("FETCH", "1:*",
                          "(UID FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        assert typ == "OK", data
        for part in data:
            if not isinstance(part, tuple):
                continue
            head = part[0].decode()
            uid = int(re.search(r"UID (\d+)", head).group(1))
            flags = set(re.search(r"FLAGS \(([^)]*)\)", head).group(1).split()) - {"\\Recent"}
            date = re.search(r'INTERNALDATE "([^"]+)"', head).group(1)
            mid = re.search(rb"<[^>]+>", part[1])
            out[uid] = (mid.group(0).decode() if mid else None, flags, date)
    return out


def epoch(internaldate):
    return datetime.datetime.strptime(internaldate.strip(), "%d-%b-%Y %H:%M:%S %z").timestamp()


def rawlog_commands(server, mark, pattern):
    """Client command lines (not literal data) of our sessions that match."""
    text = server.rawlog_text(mark)
    return [ln for ln in text.splitlines() if re.match(r"^\d+ ", ln) and pattern.search(ln)]


def settle(server, probe, folder):
    """Leave and re-select folder on the probe's connection: imap4d writes
    flags and the UIDs of new mail only then."""
    assert probe("examine", "INBOX")["g"] == OK
    return probe("select", folder)


def test_write_primitives(live_server, probe_bin, tmp_path):
    s = live_server
    keywords = s.allows_keywords()
    mark = s.rawlog_mark() if hasattr(s, "rawlog_mark") else None
    p = Probe(probe_bin, s)
    try:
        caps = p.caps
        # -- CREATE, and a refused one with the server's reason
        assert p("create", "WA")["g"] == OK
        assert p("create", "WB")["g"] == OK
        assert p("create", "WA")["g"] == FOLDER_BAD
        assert p("text")["text"]

        # -- 50 APPENDs in one go: flags, INTERNALDATE with its zone
        base = 1600000000
        items = []
        for i in range(1, 51):
            flags = []
            if i % 3 == 0:
                flags.append("\\Seen")
            if i % 5 == 0:
                flags.append("\\flagged")  # any case: sent as \Flagged
                if keywords:
                    flags.append("$Label1")
            items.append((message(i), " ".join(flags), base + i * 3600,
                          120 if i % 2 == 0 else -330))
        r = p("append", "WA", write_spec(tmp_path, "fifty", items))
        assert r["g"] == OK, r
        assert [m["g"] for m in r["msgs"]] == [OK] * 50, r
        if caps & CAP_UIDPLUS:
            assert [m["uid"] for m in r["msgs"]] == list(range(1, 51))
            assert len({m["uv"] for m in r["msgs"]}) == 1 and r["msgs"][0]["uv"]
        # (a Dovecot that hides UIDPLUS still sends APPENDUID: taken)
        box = settle(s, p, "WA")
        assert box["g"] == OK and box["exists"] == 50
        if caps & CAP_UIDPLUS:
            assert box["uidvalidity"] == r["msgs"][0]["uv"]
        view = folder_view(s, "WA")
        assert sorted(view) == list(range(1, 51))
        for uid, (mid, flags, date) in view.items():
            i = uid
            assert mid == "<w%d@probe.example>" % i
            want = set()
            if i % 3 == 0:
                want.add("\\Seen")
            if i % 5 == 0:
                want.add("\\Flagged")
                if keywords:
                    want.add("$Label1")
            # imap4d 3.15 drops APPEND's flags and takes INTERNALDATE
            # from the Date: field (its quirks, checked with imaplib)
            if s.kind != "imap4d":
                assert flags == want, (uid, flags)
                assert epoch(date) == base + i * 3600, (uid, date)
        bodies = s.bodies("WA", [7, 8])
        assert bodies == {7: message(7), 8: message(8)}

        # -- one message of 30 MB, streamed: the probe's memory stays small
        line = b"x" * 74 + b"\r\n"
        big = message(99, line * (30 * 1024 * 1024 // len(line)))
        before = p.peak_kib()
        r = p("append", "WB", write_spec(tmp_path, "big", [(big, "", base, 0)]))
        assert r["g"] == OK and r["msgs"][0]["g"] == OK, r
        grown = p.peak_kib() - before
        assert grown < 12 * 1024, "the probe's peak memory grew by %d KiB" % grown
        assert settle(s, p, "WB")["exists"] == 1
        with s.session() as c:
            c.select("WB", readonly=True)
            typ, data = c.uid("FETCH", "1:*", "(RFC822.SIZE BODY.PEEK[])")
            assert typ == "OK"
            got = next(x for x in data if isinstance(x, tuple))
            assert int(re.search(rb"RFC822.SIZE (\d+)", got[0]).group(1)) == len(big)
            assert hashlib.sha256(got[1]).digest() == hashlib.sha256(big).digest()
            del data, got

        # -- refused before anything is sent; the good one beside them goes
        bad = [(message(60).replace(b"\r\n\r\n", b"\r\n\n"), "", base, 0),
               (message(61) + b"\0\r\n", "", base, 0),
               (message(62), "\\Recent", base, 0),
               (message(63), "bad(kw", base, 0),
               (message(64), "", base, 0)]
        r = p("append", "WA", write_spec(tmp_path, "bad", bad))
        assert r["g"] == OK, r
        assert [m["g"] for m in r["msgs"]] == [MSG_BAD] * 4 + [OK], r
        assert "bare LF" in r["msgs"][0]["err"] and "NUL" in r["msgs"][1]["err"]
        # -- to a folder that is not there: each message refused
        r = p("append", "NoSuchFolder", write_spec(tmp_path, "nofolder",
                                                   [(message(70), "", base, 0)] * 2))
        assert [m["g"] for m in r["msgs"]] == [MSG_BAD] * 2, r
        assert r["g"] in (OK, FOLDER_BAD)
        if r["msgs"][0]["err"].startswith("[TRYCREATE]"):
            assert r["g"] == FOLDER_BAD
        assert p("noop")["g"] == OK
        box = settle(s, p, "WA")
        assert box["exists"] == 51
        view = folder_view(s, "WA")
        assert [v[0] for u, v in view.items() if u > 50] == ["<w64@probe.example>"]

        # -- UID MOVE with COPYUID (or refused, nothing sent, without MOVE)
        r = p("move", "WB", "1:5")
        if caps & CAP_MOVE:
            assert r["g"] == OK, r
            if caps & CAP_UIDPLUS:
                assert r["src"] == [1, 2, 3, 4, 5] and len(r["dst"]) == 5 and r["uv"]
            moved = True
        else:
            assert r["g"] == FOLDER_BAD and r["src"] == []
            moved = False
        # -- UID COPY with COPYUID
        r = p("copy", "WB", "6:10")
        assert r["g"] == OK, r
        if caps & CAP_UIDPLUS:
            assert r["src"] == [6, 7, 8, 9, 10] and len(r["dst"]) == 5
        # (a Dovecot that hides UIDPLUS still sends COPYUID: checked too)
        copied = dict(zip(r["src"], r["dst"]))
        assert p("copy", "NoSuchFolder", "11")["g"] == FOLDER_BAD
        assert p("text")["text"]
        settle(s, p, "WA")
        wa, wb = folder_view(s, "WA"), folder_view(s, "WB")
        assert (set(range(1, 6)) & set(wa)) == (set() if moved else set(range(1, 6)))
        assert set(range(6, 11)) <= set(wa)
        wb_mids = {v[0] for v in wb.values()}
        want_mids = {"<w%d@probe.example>" % i for i in range(6 if not moved else 1, 11)}
        assert want_mids | {"<w99@probe.example>"} == wb_mids
        if copied:
            for src, dst in copied.items():
                assert wb[dst][0] == "<w%d@probe.example>" % src

        # -- STORE: plain, and refusals before sending
        assert p("store", "+", "11:12", "\\Flagged \\Seen", 0)["g"] == OK
        assert p("store", "-", "12", "\\seen", 0)["g"] == OK
        assert p("store", "+", "13", "bad(kw", 0)["g"] == MSG_BAD
        assert p("store", "+", "13", "\\Recent", 0)["g"] == MSG_BAD
        assert p("store", "+", "13", "", 0)["g"] == OK
        if keywords:
            assert p("store", "+", "13", "$Probe", 0)["g"] == OK
        # -- conditional STORE: 23 changed by the second client meanwhile
        # (ours written first: imap4d writes a session's flags only when
        # it leaves the folder, and the last session to leave wins)
        settle(s, p, "WA")
        if caps & CAP_CONDSTORE:
            with s.session() as c:
                c.select("WA")
                typ, data = c.uid("FETCH", "22:23", "(MODSEQ)")
                since = max(int(x) for x in re.findall(rb"MODSEQ \((\d+)\)", b" ".join(data)))
                c.uid("STORE", "23", "+FLAGS.SILENT", "(\\Draft)")
            r = p("store", "+", "22:23", "\\Answered", since)
            assert r == {"g": OK, "modified": [23]}, r
        else:
            s.store_flags("WA", 23, "+FLAGS", "\\Draft")
            r = p("store", "+", "22:23", "\\Answered", 12345)
            assert r["g"] == FOLDER_BAD
        settle(s, p, "WA")
        view = folder_view(s, "WA")
        assert view[11][1] == {"\\Flagged", "\\Seen"}
        assert "\\Flagged" in view[12][1] and "\\Seen" not in view[12][1]
        assert view[13][1] == ({"$Probe"} if keywords else set())
        assert view[22][1] == ({"\\Answered"} if caps & CAP_CONDSTORE else set())
        assert view[23][1] == {"\\Draft"}

        # -- UID EXPUNGE of ours only: 16 is another client's \Deleted mail
        s.store_flags("WA", 16, "+FLAGS", "\\Deleted")
        settle(s, p, "WA")
        assert p("store", "+", "17:18", "\\Deleted", 0)["g"] == OK
        r = p("expunge", "17")
        assert r["g"] == (OK if caps & CAP_UIDPLUS else FOLDER_BAD)
        settle(s, p, "WA")
        view = folder_view(s, "WA")
        assert 16 in view and 18 in view and "\\Deleted" in view[18][1]
        assert (17 in view) == (not caps & CAP_UIDPLUS)

        # -- UID SEARCH HEADER from a UID on
        assert p("search", 1, "Message-ID", "<w20@probe.example>")["uids"] == [20]
        assert p("search", 21, "Message-ID", "<w20@probe.example>")["uids"] == []
        # above every UID: n:* would match the highest message
        assert p("search", 5000, "Message-ID", "<w64@probe.example>") == {"g": OK, "uids": []}
        assert p("search", 1, "Message-ID", "<w64@probe.example>")["uids"] == [51]
        assert p("search", 1, "Message-ID", "caf\u00e9")["g"] == MSG_BAD
        assert p("search", 1, "Message-ID", "x" * 999)["g"] == MSG_BAD
        assert p("search", 1, "Bad Field", "x")["g"] == MSG_BAD

        # -- RENAME of the selected folder: left first, then renamed
        assert p("select", "WB")["g"] == OK
        assert p("rename", "WB", "WC")["g"] == OK
        sel = p("selected")["selected"]
        assert sel in (None, "INBOX"), sel
        assert p("noop")["g"] == OK
        assert p("rename", "WB", "WD")["g"] == FOLDER_BAD
        names = [n for n, *_ in s.list_folders()]
        assert "WC" in names and "WB" not in names
        assert {v[0] for v in folder_view(s, "WC").values()} == wb_mids

        # -- RENAME of a parent of the selected folder
        assert p("create", "WP")["g"] == OK and p("create", "WP/Sub")["g"] == OK
        assert p("select", "WP/Sub")["g"] == OK
        assert p("rename", "WP", "WQ")["g"] == OK
        assert p("selected")["selected"] in (None, "INBOX")
        assert p("noop")["g"] == OK
        names = [n for n, *_ in s.list_folders()]
        assert "WQ/Sub" in names and "WP/Sub" not in names

        # -- DELETE of the selected folder
        assert p("select", "WA")["g"] == OK
        assert p("delete", "WA")["g"] == OK
        assert p("selected")["selected"] in (None, "INBOX")
        assert p("noop")["g"] == OK
        assert p("delete", "WA")["g"] == FOLDER_BAD
        assert p("text")["text"]
        names = [n for n, *_ in s.list_folders()]
        assert "WA" not in names
    finally:
        err = p.close()
    assert p.proc.returncode == 0, err
    assert sanitizer_free(err), err

    if mark is not None:
        # what the server did not offer was never sent, and neither was
        # anything that expunges more than the UIDs named
        cmds = rawlog_commands(s, mark, re.compile(
            r"^\d+ (UID MOVE|UID EXPUNGE|EXPUNGE|CLOSE|UNSELECT|APPEND|UID STORE .*UNCHANGEDSINCE)",
            re.I))
        assert not [c for c in cmds if re.match(r"^\d+ (EXPUNGE|CLOSE)", c, re.I)], cmds
        if not caps & CAP_MOVE:
            assert not [c for c in cmds if "MOVE" in c.upper()], cmds
        if not caps & CAP_UIDPLUS:
            assert not [c for c in cmds if "UID EXPUNGE" in c.upper()], cmds
        if not caps & CAP_CONDSTORE:
            assert not [c for c in cmds if "UNCHANGEDSINCE" in c.upper()], cmds
        unselects = [c for c in cmds if c.upper().endswith(" UNSELECT")]
        # the selected folder was left 3 times (RENAME twice, DELETE once)
        assert len(unselects) == (3 if "UNSELECT" in s.capabilities() else 0), cmds
        appends = [c for c in cmds if " APPEND " in c.upper()]
        assert len(appends) == 54 and all(c.endswith("+}") for c in appends), appends[:3]
        # the zone as given (maildir keeps only the instant)
        assert re.search(r'APPEND WA \(\\Seen\) "13-Sep-2020 09:56:40 -0530" \{\d+\+\}$',
                         appends[2]), appends[2]
        assert '"13-Sep-2020 18:26:40 +0200"' in appends[3], appends[3]


def test_append_synchronizing_literals(probe_bin, tmp_path):
    """Without LITERAL+ each message waits for the server's "+"; a NO instead
    (no such folder) refuses that message and leaves the connection good."""
    if servers.missing("dovecot"):
        pytest.skip(servers.missing("dovecot"))
    s = servers.DovecotServer(kind="dovecot-sync",
                              imap_capability="IMAP4rev1 SASL-IR ID IDLE UIDPLUS")
    p = None
    try:
        s.start()
        p = Probe(probe_bin, s)
        assert not p.caps & CAP_LITERALPLUS and p.caps & CAP_UIDPLUS
        mark = s.rawlog_mark()
        line = b"y" * 62 + b"\r\n"
        items = [(message(i), "\\Seen" if i == 2 else "", 1700000000 + i, 0) for i in range(1, 4)]
        items.append((message(4, line * (3 * 1024 * 1024 // len(line))), "", 1700000000, 60))
        r = p("append", "INBOX", write_spec(tmp_path, "sync", items))
        assert r["g"] == OK and [m["g"] for m in r["msgs"]] == [OK] * 4, r
        assert [m["uid"] for m in r["msgs"]] == [1, 2, 3, 4]
        r = p("append", "Nope", write_spec(tmp_path, "nope", items[:2]))
        assert [m["g"] for m in r["msgs"]] == [MSG_BAD] * 2, r
        assert r["g"] == FOLDER_BAD and r["msgs"][0]["err"].startswith("[TRYCREATE]")
        assert p("noop")["g"] == OK
        view = folder_view(s, "INBOX")
        assert sorted(view) == [1, 2, 3, 4] and view[2][1] == {"\\Seen"}
        assert s.bodies("INBOX", [4])[4] == items[3][0]
        err = p.close()
        assert p.proc.returncode == 0 and sanitizer_free(err), err
        appends = rawlog_commands(s, mark, re.compile(r"^\d+ APPEND ", re.I))
        assert len(appends) == 6
        assert all(re.search(r"\{\d+\}$", c) for c in appends), appends
    finally:
        if p is not None:
            p.close()
        s.cleanup()


# -- APPEND's failure paths, against a server that answers as told ---------------

class AppendServer:
    """A TLS IMAP server on 127.0.0.1 that knows CAPABILITY, LOGIN, NOOP,
    LOGOUT and APPEND, and answers the n-th APPEND as script[n] says:
    "ok" (APPENDUID 7 <100+n>), "range" (APPENDUID 7 5:6, which cannot be
    one message's), "no" (NO [OVERQUOTA]), "cut" (the connection closed
    half-way through the literal); without LITERAL+ also "refuse" (NO
    [TRYCREATE] instead of "+"), "push" (untagged data, one line with a
    literal, before the "+") and "bye" (BYE instead of "+")."""

    user = "alice"
    password = "s3cret-Pw"

    def __init__(self, tmp_path, script, literalplus=True):
        self.script = list(script)
        self.caps = "IMAP4rev1 UIDPLUS" + (" LITERAL+" if literalplus else "")
        self.received = []  # (APPEND line, literal bytes)
        ca = harness.CA(str(tmp_path), "append-ca")
        self.ca_file = ca.cert
        cert, key = ca.issue("append-server", ["localhost"], ["127.0.0.1"])
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def stop(self):
        self.stopped = True
        self.thread.join(10)
        self.sock.close()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._session, args=(c,), daemon=True).start()

    def _session(self, raw):
        raw.settimeout(30)
        try:
            with contextlib.closing(self.ctx.wrap_socket(raw, server_side=True)) as conn:
                f = conn.makefile("rwb")
                f.write(b"* OK [CAPABILITY %s] ready\r\n" % self.caps.encode())
                f.flush()
                self._serve(f)
        except (OSError, ValueError, ssl.SSLError):
            pass

    def _serve(self, f):
        n = 0
        for line in f:
            tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
            cmd = rest.split(b" ", 1)[0].upper()
            if cmd == b"CAPABILITY":
                f.write(b"* CAPABILITY %s\r\n%s OK done\r\n" % (self.caps.encode(), tag))
            elif cmd in (b"LOGIN", b"NOOP"):
                f.write(tag + b" OK done\r\n")
            elif cmd == b"LOGOUT":
                f.write(b"* BYE bye\r\n" + tag + b" OK done\r\n")
                f.flush()
                return
            elif cmd == b"APPEND":
                act = self.script[n] if n < len(self.script) else "ok"
                n += 1
                m = re.search(rb"\{(\d+)(\+?)\}$", rest)
                size, plus = int(m.group(1)), bool(m.group(2))
                if not plus:
                    if act == "refuse":
                        f.write(tag + b" NO [TRYCREATE] no such folder\r\n")
                        f.flush()
                        self.received.append((rest, None))
                        continue
                    if act == "bye":
                        f.write(b"* BYE going away\r\n")
                        f.flush()
                        return
                    if act == "push":
                        f.write(b"* 3 EXISTS\r\n* 1 FETCH (UID 9 BODY[] {7}\r\nhello\r\n)\r\n")
                    f.write(b"+ go on\r\n")
                    f.flush()
                if act == "cut":
                    f.read(size // 2)
                    return
                data = f.read(size)
                f.readline()
                self.received.append((rest, data))
                if act == "no":
                    f.write(tag + b" NO [OVERQUOTA] quota exceeded\r\n")
                elif act == "range":
                    f.write(tag + b" OK [APPENDUID 7 5:6] done\r\n")
                else:
                    f.write(tag + b" OK [APPENDUID 7 %d] done\r\n" % (100 + n))
            else:
                f.write(tag + b" BAD not here\r\n")
            f.flush()


@pytest.mark.parametrize("literalplus", [True, False], ids=["literal+", "sync"])
def test_append_refusals_in_the_middle(tmp_path, probe_bin, literalplus):
    """One message refused among others: only it is MSG_BAD, the others
    keep their APPENDUID, the connection stays good; an APPENDUID that
    cannot be one message's is not believed."""
    script = ["ok", "no", "ok", "range"] + (["refuse", "push", "ok"] if not literalplus else [])
    srv = AppendServer(tmp_path, script, literalplus)
    p = None
    try:
        p = Probe(probe_bin, srv)
        assert bool(p.caps & CAP_LITERALPLUS) == literalplus
        items = [(message(i), "\\Seen", 1700000000, 0) for i in range(len(script))]
        r = p("append", "INBOX", write_spec(tmp_path, "mid", items))
        assert r["g"] == OK, r
        got = [(m["g"], m["uid"]) for m in r["msgs"]]
        want = [(OK, 101), (MSG_BAD, 0), (OK, 103), (OK, 0)]
        if not literalplus:
            want += [(MSG_BAD, 0), (OK, 106), (OK, 107)]
        assert got == want, r
        assert r["msgs"][1]["err"] == "quota exceeded"
        if not literalplus:
            assert r["msgs"][4]["err"] == "[TRYCREATE] no such folder"
        assert p("noop")["g"] == OK
        # every byte as given, each literal of its announced kind
        sent = [d for _, d in srv.received if d is not None]
        assert sent == [d for i, (d, *_) in enumerate(items) if script[i] != "refuse"]
        assert all(line.endswith(b"+}") == literalplus for line, _ in srv.received)
        assert all(b'(\\Seen) "14-Nov-2023 22:13:20 +0000"' in line for line, _ in srv.received)
    finally:
        err = p.close() if p else ""
        srv.stop()
    assert p.proc.returncode == 0 and sanitizer_free(err), err


@pytest.mark.parametrize("how", ["cut", "bye"])
def test_append_connection_lost(tmp_path, probe_bin, how):
    """The connection lost in the middle (cut half-way through a literal,
    or BYE instead of "+"): IMAP_CONN_BAD overall, the messages before it
    keep their grade, those after it are IMAP_CONN_BAD (fate unknown)."""
    literalplus = how == "cut"
    srv = AppendServer(tmp_path, ["ok", how, "ok"], literalplus)
    p = None
    try:
        p = Probe(probe_bin, srv)
        items = [(message(i, b"z" * 70000), "", 1700000000, 0) for i in range(3)]
        r = p("append", "INBOX", write_spec(tmp_path, "lost", items))
        assert r["g"] == CONN_BAD, r
        if literalplus:
            # all three went in one burst; no reply was read before the cut
            assert [m["g"] for m in r["msgs"]][1:] == [CONN_BAD, CONN_BAD], r
        else:
            assert [(m["g"], m["uid"]) for m in r["msgs"]] == [
                (OK, 101), (CONN_BAD, 0), (CONN_BAD, 0)], r
        assert p("noop")["g"] == CONN_BAD
    finally:
        err = p.close() if p else ""
        srv.stop()
    assert p.proc.returncode == 0 and sanitizer_free(err), err
