"""Test harness: a private Dovecot on 127.0.0.1, and a convoyfs mount.

Used by conftest.py (pytest fixtures) and by tools/demo. Nothing here
touches a system service: every server gets its own directory with a
throwaway CA, certificates, config, mail store, logs and rawlogs, and is
stopped by the pid in its own master.pid.
"""

import contextlib
import datetime as dt
import email.utils
import grp
import importlib.machinery
import importlib.util
import imaplib
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPORA = os.path.normpath(os.path.join(REPO, "..", "shared", "corpora"))
DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
HARNESS_ID = "convoyfs-test-harness"
imaplib.Commands.setdefault("ID", ("AUTH", "SELECTED"))


def load_tool(name):
    """Import an executable python script from tools/ as a module."""
    path = os.path.join(REPO, "tools", name)
    modname = name.replace("-", "_")
    loader = importlib.machinery.SourceFileLoader(modname, path)
    spec = importlib.util.spec_from_loader(modname, loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


genmail = load_tool("gen-mailbox")
mutf7_encode = genmail.mutf7_encode
mutf7_decode = genmail.mutf7_decode


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, interval=0.05, what="condition"):
    """Poll pred() until it returns a true value; return it, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class CA:
    """A throwaway certificate authority made with the openssl command line."""

    def __init__(self, directory, name="ca"):
        self.dir = directory
        self.name = name
        self.cert = os.path.join(directory, name + ".pem")
        self.key = os.path.join(directory, name + ".key")
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", self.key, "-out", self.cert, "-days", "30",
                 "-subj", "/CN=convoyfs test CA %s" % name,
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)

    def issue(self, name, dns=(), ips=()):
        """Make a server certificate and key for the given names; return (cert, key)."""
        cert = os.path.join(self.dir, name + ".pem")
        key = os.path.join(self.dir, name + ".key")
        csr = os.path.join(self.dir, name + ".csr")
        ext = os.path.join(self.dir, name + ".ext")
        san = ",".join(["DNS:" + d for d in dns] + ["IP:" + i for i in ips])
        with open(ext, "w") as f:
            f.write("basicConstraints=CA:FALSE\n"
                    "keyUsage=critical,digitalSignature,keyEncipherment\n"
                    "extendedKeyUsage=serverAuth\n")
            if san:
                f.write("subjectAltName=%s\n" % san)
        cn = (list(dns) + list(ips) + [name])[0]
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=" + cn, cwd=self.dir)
        _openssl("x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key,
                 "-CAcreateserial", "-out", cert, "-days", "30", "-extfile", ext, cwd=self.dir)
        return cert, key


def parse_list_line(item):
    """Parse one imaplib LIST response item into (flags, delimiter, raw name)."""
    if isinstance(item, tuple):  # name sent as a literal
        head, name = item
        head = head.decode()
        name = name.decode()
    else:
        head, name = item.decode(), None
    m = re.match(r'\(([^)]*)\) (NIL|"(?:[^"\\]|\\.)*") ?(.*)$', head)
    if not m:
        raise ValueError("cannot parse LIST line %r" % head)
    flags = m.group(1).split()
    delim = None if m.group(2) == "NIL" else re.sub(r"\\(.)", r"\1", m.group(2)[1:-1])
    if name is None:
        rest = m.group(3)
        if rest.startswith('"'):
            name = re.sub(r"\\(.)", r"\1", rest[1:-1])
        else:
            name = rest
    return flags, delim, name


def quote(s):
    """An IMAP quoted string (the caller keeps CR, LF and NUL out)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _internaldate_to_epoch(s):
    t = imaplib.Internaldate2tuple(b'INTERNALDATE "' + s.encode() + b'"')
    return time.mktime(t) if t else None


class Dovecot:
    """A private Dovecot 2.3 on 127.0.0.1 with TLS from a throwaway CA.

    port: implicit TLS (imaps); plain_port: cleartext with STARTTLS.
    Mail is maildir with LAYOUT=fs, so the hierarchy delimiter is '/'
    (layout="index" with another separator allows names such as '..' or
    'a/b'; tests read the delimiter from LIST).
    Every IMAP session's post-login traffic is in rawlog_dir.
    """

    user = "alice"
    password = "s3cret-Pw"

    def __init__(self, workdir=None, server_names=("localhost", "127.0.0.1"),
                 imap_capability=None, extra_conf="", layout="fs", separator="/"):
        self.own_dir = workdir is None
        self.dir = workdir or tempfile.mkdtemp(prefix="convoyfs-dovecot-")
        os.chmod(self.dir, 0o755)
        self.server_names = server_names
        self.imap_capability = imap_capability
        self.extra_conf = extra_conf
        self.layout = layout
        self.separator = separator
        self.proc = None
        self.port = None
        self.plain_port = None
        self.base_dir = os.path.join(self.dir, "run")
        self.rawlog_dir = os.path.join(self.dir, "rawlog")
        self.home_root = os.path.join(self.dir, "home")
        self.log_path = os.path.join(self.dir, "dovecot.log")
        self.conf = os.path.join(self.dir, "dovecot.conf")
        pki = os.path.join(self.dir, "pki")
        os.makedirs(pki, exist_ok=True)
        self.ca = CA(pki, "ca")
        self.ca_file = self.ca.cert
        dns = [n for n in server_names if not re.match(r"^[\d.]+$", n)]
        ips = [n for n in server_names if re.match(r"^[\d.]+$", n)]
        self.cert, self.key = self.ca.issue("server", dns, ips)
        self.password_file = os.path.join(self.dir, "password")
        self.write_password(self.password)
        self._others = 0

    # -- certificates and credentials ------------------------------------

    def other_ca(self):
        """A second, unrelated CA: its file does not verify this server."""
        self._others += 1
        return CA(os.path.join(self.dir, "pki"), "other-ca-%d" % self._others)

    def write_password(self, password, path=None):
        """Write a 0600 file holding password; return a password_command that prints it."""
        path = path or self.password_file
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        return self.password_command(path)

    def password_command(self, path=None):
        return "cat " + shlex.quote(path or self.password_file)

    # -- lifecycle -----------------------------------------------------------

    def _users(self):
        if os.geteuid() == 0:
            return "nobody", "nogroup", None
        me = pwd.getpwuid(os.geteuid()).pw_name
        return me, grp.getgrgid(os.getegid()).gr_name, me

    def _write_conf(self):
        uid, gid, unpriv = self._users()
        for d in (self.base_dir, self.rawlog_dir, self.home_root):
            os.makedirs(d, exist_ok=True)
        os.chmod(self.base_dir, 0o755)
        if os.geteuid() == 0:
            pw = pwd.getpwnam(uid)
            for d in (self.rawlog_dir, self.home_root):
                os.chown(d, pw.pw_uid, grp.getgrnam(gid).gr_gid)
        lines = [
            "# generated by tests/integration/harness.py",
            "base_dir = %s" % self.base_dir,
            "instance_name = convoyfs-test-%d" % self.port,
            "log_path = %s" % self.log_path,
            "protocols = imap",
            "listen = 127.0.0.1",
            "ssl = yes",
            "ssl_cert = <%s" % self.cert,
            "ssl_key = <%s" % self.key,
            "ssl_min_protocol = TLSv1.2",
            "disable_plaintext_auth = no",
            "auth_mechanisms = plain login",
            # lport tells an implicit-TLS login from a STARTTLS one in the log
            "login_log_format_elements = user=<%u> method=%m rip=%r lip=%l lport=%{lport} "
            "mpid=%e %c session=<%{session}>",
            "passdb {\n  driver = static\n  args = password=%s\n}" % self.password,
            "userdb {\n  driver = static\n  args = uid=%s gid=%s home=%s/%%u\n}"
            % (uid, gid, self.home_root),
            "mail_location = maildir:~/Maildir:LAYOUT=%s" % self.layout,
            "mail_fsync = never",
            "first_valid_uid = 1",
            "first_valid_gid = 1",
            "namespace inbox {\n  inbox = yes\n  separator = %s\n" % self.separator +
            "  mailbox Sent {\n    special_use = \\Sent\n    auto = subscribe\n  }\n"
            "  mailbox Trash {\n    special_use = \\Trash\n    auto = subscribe\n  }\n}",
            "service imap-login {\n  chroot =\n"
            "  inet_listener imap {\n    address = 127.0.0.1\n    port = %d\n  }\n"
            "  inet_listener imaps {\n    address = 127.0.0.1\n    port = %d\n    ssl = yes\n  }\n}"
            % (self.plain_port, self.port),
            # no growing delay after failed logins (the tests fail some on purpose)
            "service anvil {\n  chroot =\n  unix_listener anvil-auth-penalty {\n    mode = 0\n  }\n}",
            "protocol imap {\n  rawlog_dir = %s\n  mail_max_userip_connections = 200\n%s}"
            % (self.rawlog_dir,
               ("  imap_capability = %s\n" % self.imap_capability) if self.imap_capability else ""),
        ]
        if unpriv:
            lines += ["default_login_user = %s" % unpriv,
                      "default_internal_user = %s" % unpriv,
                      "service auth {\n  user = %s\n}" % unpriv]
        lines.append(self.extra_conf)
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def start(self, timeout=20):
        """Start the server (fresh ports the first time) and wait until it answers."""
        if self.port is None:
            self.port = free_port()
            self.plain_port = free_port()
        self._write_conf()
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", self.conf],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.dir, "dovecot.stderr"), "ab"),
                                     start_new_session=True)

        def answers():
            if self.proc.poll() is not None:
                raise RuntimeError("dovecot exited with %s:\n%s" % (self.proc.returncode,
                                                                    self.diagnostics()))
            # A greeting on both ports, each connection closed with LOGOUT
            # (a login process left half-way makes the master linger at stop).
            probe = ssl.create_default_context()
            probe.check_hostname = False  # the certificate may name another host on purpose
            probe.verify_mode = ssl.CERT_NONE
            try:
                for port in (self.plain_port, self.port):
                    c = (imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=probe, timeout=5)
                         if port == self.port else imaplib.IMAP4("127.0.0.1", port, timeout=5))
                    c.logout()
                return True
            except (OSError, imaplib.IMAP4.error):
                return False

        try:
            wait_until(answers, timeout, what="dovecot to listen")
        except BaseException:
            self.stop()
            raise
        return self

    def master_pid(self):
        try:
            with open(os.path.join(self.base_dir, "master.pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _children(self, pid):
        out = []
        with contextlib.suppress(OSError):
            for t in os.listdir("/proc/%d/task" % pid):
                with contextlib.suppress(OSError, ValueError):
                    with open("/proc/%d/task/%s/children" % (pid, t)) as f:
                        out += [int(x) for x in f.read().split()]
        return out

    def stop(self, timeout=20):
        """Stop by the pid in master.pid (SIGTERM) and wait for it. A master
        still waiting for its children after 2 s has them killed by pid;
        after timeout it is killed itself."""
        if self.proc is None:
            return
        pid = self.master_pid() or self.proc.pid
        children = self._children(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            for c in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(c, signal.SIGKILL)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def cleanup(self):
        self.stop()
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    def diagnostics(self):
        out = []
        for p in (self.log_path, os.path.join(self.dir, "dovecot.stderr")):
            with contextlib.suppress(OSError):
                with open(p, errors="replace") as f:
                    out.append("--- %s\n%s" % (p, f.read()[-4000:]))
        return "\n".join(out)

    def log_text(self):
        with contextlib.suppress(OSError):
            with open(self.log_path, errors="replace") as f:
                return f.read()
        return ""

    # -- IMAP as a second client -----------------------------------------

    def url(self, host="127.0.0.1", scheme="imaps"):
        port = self.port if scheme == "imaps" else self.plain_port
        return "%s://%s@%s:%d" % (scheme, self.user, host, port)

    def ssl_context(self):
        return ssl.create_default_context(cafile=self.ca_file)

    def imap(self, host="127.0.0.1"):
        """A logged-in imaplib connection over TLS that verifies the test CA.
        It names itself with ID, so rawlog_text() can leave its traffic out."""
        c = imaplib.IMAP4_SSL(host, self.port, ssl_context=self.ssl_context(), timeout=60)
        c.login(self.user, self.password)
        c._simple_command("ID", '("name" "%s")' % HARNESS_ID)
        return c

    @contextlib.contextmanager
    def session(self):
        c = self.imap()
        try:
            yield c
        finally:
            with contextlib.suppress(Exception):
                c.logout()

    def create(self, name, imap=None):
        """CREATE a folder by display name (UTF-8); return its raw mUTF-7 name."""
        with self._conn(imap) as c:
            return genmail.create_folder(c, name)

    @contextlib.contextmanager
    def _conn(self, imap):
        if imap is not None:
            yield imap
        else:
            with self.session() as c:
                yield c

    def append(self, folder, data, date=None, flags=(), imap=None):
        """APPEND one message to folder (display name); return its UID."""
        return self.append_many(folder, [(data, date, flags)], imap=imap)[0]

    def append_many(self, folder, items, imap=None, create=True):
        """APPEND (bytes, datetime or None, flags) items, pipelined; return UIDs.
        Refused messages come back as exceptions in the list."""
        raw = "INBOX" if folder == "INBOX" else mutf7_encode(folder)
        fixed = []
        for data, when, flags in items:
            if when is None:
                when = dt.datetime.now(dt.timezone.utc)
            fixed.append((data, when, tuple(flags)))
        with self._conn(imap) as c:
            if create and raw != "INBOX":
                genmail.create_folder(c, folder)
            return genmail.append_many(c, raw, fixed)

    def list_folders(self, imap=None):
        """[(display name, raw name, delimiter, flags)] from LIST "" "*"."""
        with self._conn(imap) as c:
            typ, data = c.list('""', "*")
            assert typ == "OK", data
        out = []
        for item in data:
            if item is None:
                continue
            flags, delim, raw = parse_list_line(item)
            out.append((mutf7_decode(raw), raw, delim, flags))
        return out

    def fetch_folder(self, folder, body=True, imap=None, raw_name=False):
        """{uid: dict(flags, internaldate, size, message_id, body)} of a folder,
        fetched with PEEK so nothing is marked \\Seen (\\Recent left out)."""
        raw = folder if raw_name or folder == "INBOX" else mutf7_encode(folder)
        items = "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]%s)" % (
            " BODY.PEEK[]" if body else "")
        out = {}
        with self._conn(imap) as c:
            typ, data = c.select(quote(raw), readonly=True)
            assert typ == "OK", (folder, data)
            if int(data[0]) == 0:
                return out
            typ, data = c.uid("FETCH", "1:*", items)
            assert typ == "OK", data
            c.close()
        cur = None
        for part in data:
            if isinstance(part, tuple):
                head, lit = part
                m = re.search(rb"UID (\d+)", head)
                if m:
                    cur = out.setdefault(int(m.group(1)), {})
                    fm = re.search(rb"FLAGS \(([^)]*)\)", head)
                    cur["flags"] = set(fm.group(1).decode().split()) - {"\\Recent"}
                    cur["internaldate"] = _internaldate_to_epoch(
                        re.search(rb'INTERNALDATE "([^"]+)"', head).group(1).decode())
                    cur["size"] = int(re.search(rb"RFC822.SIZE (\d+)", head).group(1))
                if b"HEADER.FIELDS" in head:
                    m = re.search(rb"(?mi)^Message-ID:[ \t]*(.*(?:\r?\n[ \t].*)*)", lit)
                    cur["message_id"] = (m.group(1).decode("utf-8", "replace").strip()
                                         if m else "")
                elif re.search(rb"BODY\[\] \{\d+\}$", head):
                    cur["body"] = lit
        return out

    def flags_of(self, folder, uids=None, imap=None):
        """{uid: set(flags)} without touching \\Seen; \\Recent left out."""
        raw = "INBOX" if folder == "INBOX" else mutf7_encode(folder)
        with self._conn(imap) as c:
            typ, data = c.select(quote(raw), readonly=True)
            assert typ == "OK", data
            spec = ",".join(str(u) for u in uids) if uids else "1:*"
            typ, data = c.uid("FETCH", spec, "(UID FLAGS)")
            c.close()
        out = {}
        for line in data:
            if not line:
                continue
            m = re.search(rb"UID (\d+) FLAGS \(([^)]*)\)|FLAGS \(([^)]*)\) UID (\d+)", line)
            if m:
                if m.group(1):
                    out[int(m.group(1))] = set(m.group(2).decode().split())
                else:
                    out[int(m.group(4))] = set(m.group(3).decode().split())
        # \Recent belongs to one session (RFC 3501 §2.3.2), not to the message.
        return {uid: f - {"\\Recent"} for uid, f in out.items()}

    def doveadm(self, *args, check=True, input=None):
        """Run doveadm against this instance; return its stdout."""
        r = subprocess.run([DOVEADM, "-c", self.conf, *args], input=input,
                           capture_output=True, timeout=60)
        if check and r.returncode != 0:
            raise RuntimeError("doveadm %s failed (%d): %s" % (
                " ".join(args), r.returncode, r.stderr.decode(errors="replace")))
        return r.stdout.decode(errors="replace")

    # -- rawlog ------------------------------------------------------------

    def rawlog_sessions(self, mark=None, include_harness=False):
        """[(session name, client->server text, server->client text)] of every
        IMAP session, only what was written after mark (see rawlog_mark()).
        Dovecot 2.3 writes <date>-<time>.<pid>.<n>.in/.out per session with a
        timestamp before each line, from just after LOGIN. Timestamps are
        removed here. Sessions of this harness (its own imap()) are left out
        unless include_harness."""
        mark = mark or {}
        try:
            names = sorted(os.listdir(self.rawlog_dir))
        except OSError:
            return []
        out = []
        for n in names:
            if not n.endswith(".in"):
                continue
            base = os.path.join(self.rawlog_dir, n[:-3])
            texts = []
            for p in (base + ".in", base + ".out"):
                data = b""
                with contextlib.suppress(OSError):
                    with open(p, "rb") as f:
                        head = f.read(600)
                        if p.endswith(".in") and not include_harness and HARNESS_ID.encode() in head:
                            break
                        f.seek(mark.get(p, 0))
                        data = f.read()
                texts.append(re.sub(r"(?m)^\d+\.\d+ ", "",
                                    data.decode("utf-8", errors="replace")))
            if len(texts) == 2 and (texts[0] or texts[1]):
                out.append((n[:-3], texts[0], texts[1]))
        return out

    def rawlog_mark(self):
        """Remember how far every rawlog file has been written."""
        mark = {}
        with contextlib.suppress(OSError):
            for n in os.listdir(self.rawlog_dir):
                p = os.path.join(self.rawlog_dir, n)
                with contextlib.suppress(OSError):
                    mark[p] = os.path.getsize(p)
        return mark

    def rawlog_text(self, mark=None, direction="in", include_harness=False):
        """All client->server ("in") or server->client ("out") text of the
        sessions after mark, one session after another."""
        i = 1 if direction == "in" else 2
        return "".join(s[i] for s in self.rawlog_sessions(mark, include_harness))


# -- the sample mailbox ---------------------------------------------------------

GENERATED_FOLDERS = ["INBOX", "Archive", "Lists", "Lists/dev", "Lists/dev/patches",
                     "Lists/announce", "Café", "日本語", "Work/Projects 2024"]


def split_mbox(data):
    """Split classic mbox bytes into (message bytes, datetime or None) pairs."""
    out = []
    parts = re.split(rb"(?:^|\r?\n)(From [^\r\n]*)\r?\n", data)
    # parts: [before, fromline, msg, fromline, msg, ...]
    for i in range(1, len(parts) - 1, 2):
        when = None
        m = re.match(rb"From \S+\s+(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})", parts[i])
        if m:
            with contextlib.suppress(ValueError):
                when = dt.datetime.strptime(re.sub(rb" +", b" ", m.group(1)).decode(),
                                            "%a %b %d %H:%M:%S %Y").replace(tzinfo=dt.timezone.utc)
        msg = parts[i + 1]
        msg = re.sub(rb"(\r?\n)+$", b"", msg) + (b"\r\n" if b"\r\n" in msg else b"\n")
        out.append((msg, when))
    return out


def _header_date(data):
    m = re.search(rb"(?mi)^Date:[ \t]*(.+)$", data.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0])
    if m:
        with contextlib.suppress(Exception):
            d = email.utils.parsedate_to_datetime(m.group(1).decode("ascii", "replace").strip())
            if d.tzinfo is None:
                d = d.replace(tzinfo=dt.timezone.utc)
            if 1980 < d.year < 2100:
                return d
    return dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)


def corpus_messages(corpora=CORPORA):
    """{folder: [(bytes, datetime)]} of the real messages in ../shared/corpora,
    or None when that directory is absent."""
    if not os.path.isdir(corpora):
        return None
    out = {}
    gluon = os.path.join(corpora, "gluon-testdata")
    if os.path.isdir(gluon):
        for n in sorted(os.listdir(gluon)):
            p = os.path.join(gluon, n)
            data = open(p, "rb").read()
            if n.endswith(".eml"):
                out.setdefault("Corpus/gluon", []).append((data, _header_date(data)))
            elif n == "dovecot-crlf":
                out["Corpus/dovecot-list"] = [(m, w or _header_date(m)) for m, w in split_mbox(data)]
    imt = os.path.join(corpora, "imaptest-mbox")
    for root, _dirs, files in sorted(os.walk(imt)):
        for n in sorted(files):
            if n.endswith(".mbox") or os.path.basename(root) == "broken":
                data = open(os.path.join(root, n), "rb").read()
                out.setdefault("Corpus/imaptest", []).extend(
                    (m, w or _header_date(m)) for m, w in split_mbox(data))
    nm = os.path.join(corpora, "notmuch")
    for root, _dirs, files in sorted(os.walk(nm)):
        for n in sorted(files):
            if n == "SOURCE.md":
                continue
            data = open(os.path.join(root, n), "rb").read()
            out.setdefault("Corpus/notmuch", []).append((data, _header_date(data)))
    return out


def load_sample_mailbox(dovecot, n=520, seed=2024, corpus=True, folders=GENERATED_FOLDERS):
    """Fill dovecot with n generated messages spread over folders (a third
    in INBOX; in each folder some \\Seen, a few \\Flagged), plus the corpora
    when present. Returns
    {"generated": n, "corpus": count or None, "refused": [...]}."""
    gen = list(genmail.gen_messages(n, seed))
    per = {f: [] for f in folders}
    for i, (data, when) in enumerate(gen):
        folder = folders[0] if i % 3 == 0 else folders[1 + (i // 3) % (len(folders) - 1)]
        flags = []
        if i % 5 in (1, 3):
            flags.append("\\Seen")
        if i % 17 == 0:
            flags.append("\\Flagged")
        if i % 23 == 0:
            flags.append("$Label1")
        per[folder].append((data, when, flags))
    refused = []
    corpus_count = None
    with dovecot.session() as c:
        for folder in folders:
            if folder != "INBOX":
                genmail.create_folder(c, folder)
        for folder, items in per.items():
            if items:
                res = dovecot.append_many(folder, items, imap=c, create=False)
                refused += [(folder, r) for r in res if isinstance(r, Exception)]
        if corpus:
            cm = corpus_messages()
            if cm is not None:
                corpus_count = 0
                for folder, msgs in cm.items():
                    genmail.create_folder(c, folder)
                    res = dovecot.append_many(folder, [(m, w, ()) for m, w in msgs],
                                              imap=c, create=False)
                    for r in res:
                        if isinstance(r, Exception):
                            refused.append((folder, r))
                        else:
                            corpus_count += 1
    return {"generated": n, "corpus": corpus_count, "refused": refused}


# -- a convoyfs mount ---------------------------------------------------------

SANITIZER_PATTERNS = [re.compile(p) for p in (
    r"==\d+==", r"runtime error:", r"ERROR: AddressSanitizer", r"ERROR: LeakSanitizer",
    r"Sanitizer", r"SUMMARY: ")]


def convoyfs_binary():
    return os.environ.get("CONVOYFS") or os.path.join(REPO, "build", "convoyfs")


def mounted(path):
    """True if path is a mount point in /proc/mounts (never stats the path,
    which would block on a stuck FUSE daemon)."""
    path = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
            if mp == path:
                return True
    return False


def fusermount(path, lazy=False):
    args = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [path]
    return subprocess.run(args, capture_output=True, timeout=30)


class Mount:
    """convoyfs -f running on a mount point; stop() unmounts it."""

    def __init__(self, dovecot, mountpoint, cache_dir, host="127.0.0.1", scheme="imaps",
                 options=None, password_command=None, cafile=None, url=None,
                 binary=None, extra_args=(), timeout=10, debug=None):
        self.dovecot = dovecot
        self.path = mountpoint
        self.cache_dir = cache_dir
        self.binary = binary or convoyfs_binary()
        opts = {
            "cafile": cafile or dovecot.ca_file,
            "password_command": password_command or dovecot.password_command(),
            "cache_dir": cache_dir,
            "timeout": str(timeout),
            # bodies come when a file is opened, as the tests of reads,
            # the cache and hostile servers count them; test_prefetch.py
            # runs the default (prefetch=all)
            "prefetch": "none",
        }
        if debug:
            opts["debug"] = debug
        opts.update(options or {})
        self.url = url or dovecot.url(host, scheme)
        optstr = ",".join(k if v is None else "%s=%s" % (k, v) for k, v in opts.items())
        self.argv = [self.binary, "-f", *extra_args, "-o", optstr, self.url, mountpoint]
        self.stderr_path = os.path.join(os.path.dirname(cache_dir.rstrip("/")),
                                        os.path.basename(mountpoint.rstrip("/")) + ".stderr")
        self.proc = None
        self.killed_by_watchdog = False
        self._watchdog = None

    def start(self, wait=True, mount_timeout=30, watchdog=600):
        os.makedirs(self.path, exist_ok=True)
        os.makedirs(self.cache_dir, exist_ok=True)
        self.stderr_file = open(self.stderr_path, "ab")
        # its own session: a Ctrl-C meant for the caller does not reach it,
        # so the caller unmounts in order
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=self.stderr_file, stderr=self.stderr_file,
                                     start_new_session=True)
        self.arm(watchdog)
        if wait:
            self.wait_mounted(mount_timeout)
        return self

    def arm(self, seconds):
        """Kill the daemon if it still runs in seconds (None: never). A stuck
        daemon would hang every syscall on the mount; killing it aborts the
        FUSE connection, so the test fails instead of hanging."""
        self.disarm()
        if seconds:
            self._watchdog = threading.Timer(seconds, self._expire)
            self._watchdog.daemon = True
            self._watchdog.start()

    def disarm(self):
        if self._watchdog:
            self._watchdog.cancel()
            self._watchdog = None

    def _expire(self):
        if self.proc and self.proc.poll() is None:
            self.killed_by_watchdog = True
            self.proc.kill()

    def stderr(self):
        with contextlib.suppress(OSError):
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", errors="replace")
        return ""

    def wait_mounted(self, timeout=30):
        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError("convoyfs exited with %d before mounting:\n%s" % (
                    self.proc.returncode, self.stderr()))
            return mounted(self.path)
        wait_until(ready, timeout, what="convoyfs to mount %s" % self.path)

    def status(self):
        with open(os.path.join(self.path, ".convoyfs", "status"), errors="replace") as f:
            return f.read()

    def status_field(self, name):
        m = re.search(r"(?m)^%s:\s*(.*)$" % re.escape(name), self.status())
        return m.group(1).strip() if m else None

    def bodies_fetched(self):
        v = self.status_field("bodies fetched")
        return int(v) if v is not None else None

    def wait_idle(self, timeout=120):
        """Poll .convoyfs/status until it says 'state: idle'."""
        last = [""]

        def idle():
            if self.proc.poll() is not None:
                raise RuntimeError("convoyfs exited with %d:\n%s" % (self.proc.returncode,
                                                                    self.stderr()))
            try:
                last[0] = self.status()
            except OSError as e:
                last[0] = "(cannot read status: %s)" % e
                return False
            return re.search(r"(?m)^state:\s*idle\s*$", last[0]) is not None
        try:
            wait_until(idle, timeout, interval=0.1, what="state: idle")
        except TimeoutError as e:
            raise TimeoutError("%s; last status:\n%s" % (e, last[0])) from None

    def stop(self, timeout=30):
        """Unmount with fusermount3 -u and wait for the daemon; return its exit
        status. Falls back to a lazy unmount, SIGTERM and SIGKILL."""
        if self.proc is None:
            return None
        self.disarm()
        rc = None
        if mounted(self.path):
            r = fusermount(self.path)
            if r.returncode != 0:
                fusermount(self.path, lazy=True)
        else:
            timeout = 1  # never mounted, or gone: an unmount cannot end it
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            if mounted(self.path):
                fusermount(self.path, lazy=True)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            rc = None
        if mounted(self.path):
            fusermount(self.path, lazy=True)
        self.stderr_file.close()
        self.returncode = self.proc.returncode
        self.proc = None
        return rc

    def sanitizer_reports(self):
        return [line for line in self.stderr().splitlines()
                if any(p.search(line) for p in SANITIZER_PATTERNS)]


# -- reading the rawlog --------------------------------------------------------

# A FETCH that returns message text: BODY[], BODY.PEEK[], BODY[TEXT], a part
# (BODY[1]), BINARY[...], RFC822, RFC822.TEXT. Header fetches
# (BODY.PEEK[HEADER.FIELDS (...)], RFC822.HEADER) do not count.
BODY_FETCH = re.compile(r"(?i)\bFETCH\b.*?(BODY(\.PEEK)?\[(\]|TEXT\]|\d)|BINARY(\.PEEK)?\["
                        r"|\bRFC822(\.TEXT)?(?=[\s)]))")
# The same, limited to the forms that set \Seen (RFC 3501 §6.4.5).
SEEN_FETCH = re.compile(r"(?i)\bFETCH\b.*?(BODY\[|BINARY\[|\bRFC822(\.TEXT)?(?=[\s)]))")
# An untagged FETCH response carrying per-message metadata.
META_RESPONSE = re.compile(r"(?m)^\* \d+ FETCH \(.*(RFC822\.SIZE|INTERNALDATE|ENVELOPE|"
                           r"BODY\[HEADER)")


def commands(text, pattern):
    """The client command lines of a rawlog text that match pattern."""
    return [line for line in text.splitlines() if pattern.search(line)]


# -- walking the mount -----------------------------------------------------------

CONTROL_DIR = ".convoyfs"
CONVERSATIONS = "Conversations"


def walk_folders(root, server_dirs=()):
    """{relative dir path: sorted file names} of the folder part of a mount:
    everything but .convoyfs/ and (unless the server has such a folder)
    Conversations/ at the top. The root itself is "" and holds no files."""
    skip = {CONTROL_DIR}
    if CONVERSATIONS not in server_dirs:
        skip.add(CONVERSATIONS)
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel
        if rel == "":
            dirnames[:] = [d for d in dirnames if d not in skip]
        dirnames.sort()
        out[rel] = sorted(filenames)
    return out


MESSAGE_NAME = re.compile(r"^(\d{4})-(\d\d)-(\d\d) (\d\d)\.(\d\d) (.*) #(\d+)\.eml$", re.S)


def name_problems(name):
    """Why a file or directory name is unsafe ([] when it is fine)."""
    raw = os.fsencode(name)
    problems = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return ["not valid UTF-8: %r" % raw]
    if len(raw) > 200:  # convoyfs's NAMES_MAX: under notmuch's 245 and NAME_MAX
        problems.append("%d bytes long" % len(raw))
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in text):
        problems.append("has a control character: %r" % text)
    if "/" in text or "\0" in text:
        problems.append("has / or NUL")
    if text in (".", ".."):
        problems.append("is . or ..")
    return problems


def expected_subject(header_value):
    """The subject part of a message file name as the contract sanitises it:
    RFC 2047 decoded, control characters -> space, ':' and '/' -> '-',
    spaces collapsed and trimmed."""
    import email.header
    parts = []
    for chunk, charset in email.header.decode_header(header_value):
        if isinstance(chunk, bytes):
            chunk = chunk.decode(charset or "utf-8", errors="replace")
        parts.append(chunk)
    text = "".join(parts)
    text = re.sub(r"[\x00-\x1f\x7f]", " ", text).replace(":", "-").replace("/", "-")
    return re.sub(r" +", " ", text).strip()


def subject_header(data):
    """The unfolded Subject header of a message, or None."""
    head = re.split(rb"\r?\n\r?\n", data, 1)[0]
    m = re.search(rb"(?mi)^Subject:[ \t]*(.*(?:\r?\n[ \t].*)*)", head)
    if not m:
        return None
    return re.sub(rb"\r?\n(?=[ \t])", b"", m.group(1)).decode("utf-8", errors="replace").rstrip("\r")


# -- a scripted IMAP server --------------------------------------------------------

class FakeImapServer:
    """A plaintext IMAP server on 127.0.0.1 for what Dovecot will not do:
    greet with given capabilities, answer STARTTLS as told, and record
    every line the client sends (to prove that no credential was sent)."""

    def __init__(self, capabilities="IMAP4rev1 AUTH=PLAIN", starttls_reply="BAD no TLS here"):
        self.capabilities = capabilities
        self.starttls_reply = starttls_reply
        self.lines = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn):
        conn.settimeout(30)
        with conn:
            f = conn.makefile("rwb")
            try:
                f.write(b"* OK [CAPABILITY %s] fake server ready\r\n" % self.capabilities.encode())
                f.flush()
                for line in f:
                    self.lines.append(line)
                    parts = line.split(None, 2)
                    if len(parts) < 2:
                        continue
                    tag, cmd = parts[0], parts[1].upper()
                    if cmd == b"CAPABILITY":
                        f.write(b"* CAPABILITY %s\r\n%s OK done\r\n" % (self.capabilities.encode(), tag))
                    elif cmd == b"STARTTLS":
                        f.write(b"%s %s\r\n" % (tag, self.starttls_reply.encode()))
                    elif cmd == b"LOGOUT":
                        f.write(b"* BYE bye\r\n%s OK done\r\n" % tag)
                        f.flush()
                        return
                    elif cmd in (b"LOGIN", b"AUTHENTICATE"):
                        f.write(b"%s NO [AUTHENTICATIONFAILED] no\r\n" % tag)
                    else:
                        f.write(b"%s BAD unknown\r\n" % tag)
                    f.flush()
            except OSError:
                pass

    def credentials_sent(self):
        return [l for l in self.lines if re.match(rb"\S+ (LOGIN|AUTHENTICATE)\b", l, re.I)]

    def close(self):
        self._stop = True
        self.sock.close()
        self.thread.join(5)


def message_id_token(value):
    """The msg-id of a Message-ID header value (RFC 5322 §3.6.4): the first
    <...> with the white space folding may have put inside removed, else a
    lone word; "" when there is none."""
    if not value:
        return ""
    for m in re.finditer(r"<[^<>]*>", value):
        tok = re.sub(r"[ \t\r\n]", "", m.group(0))
        if len(tok) > 2:
            return tok
    v = value.strip()
    return v if v and not re.search(r"\s", v) else ""
