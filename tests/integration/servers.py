"""More IMAP servers for the integration tests, beside harness.Dovecot:
Cyrus IMAP 3.6 and GNU Mailutils imap4d, each a private instance under its
own temporary directory on 127.0.0.1, with implicit TLS from a throwaway CA
(harness.CA), stopped by its pid.

Every server class here (and DovecotServer, harness.Dovecot with the same
extra helpers) offers what tests and harness.Mount use of harness.Dovecot:
start(), stop(), cleanup(), a context manager, ca_file, user, password,
password_command(), url(host, scheme), imap(), session(), append(),
append_many(), create(), list_folders(), fetch_folder(), flags_of();
plus the second-client helpers of SecondClient (rename, delete,
expunge_uids, store_flags) and the oracle snapshot(): {folder: {uid: flags}}
as an imaplib client sees it. `kind` names the server for test ids.

Where the servers come from (tools/install-deps sets them up):
- Cyrus: master, ctl_cyrusdb and the libraries from the cyrus-common
  package; imapd and idled unpacked from the cyrus-imapd .deb with
  `dpkg -x` into CYRUS_DIR (cyrus-imapd conflicts with dovecot-imapd, so it
  is not installed). master runs as root and switches to user cyrus.
- imap4d: /usr/sbin/imap4d from mailutils-imap4d, in the foreground.
See ../../../shared/TESTING.md for the recipes these follow.
"""

import contextlib
import errno
import imaplib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse

import harness
from harness import mutf7_encode, quote

CYRUS_DIR = os.environ.get("CONVOYFS_CYRUS_DIR", "/opt/convoyfs-test/cyrus-imapd")
CYRUS_BIN = "/usr/lib/cyrus/bin"  # cyrus-common: master, ctl_cyrusdb
CYRUS_IMAPD = os.path.join(CYRUS_DIR, "usr/lib/cyrus/bin/imapd")
CYRUS_IDLED = os.path.join(CYRUS_DIR, "usr/lib/cyrus/bin/idled")
CYRUS_MASTER = os.path.join(CYRUS_BIN, "master")
SASLPASSWD2 = "/usr/sbin/saslpasswd2"
IMAP4D = "/usr/sbin/imap4d"
DOVECOT_REDUCED_CAPABILITY = "IMAP4rev1 LITERAL+ SASL-IR ID IDLE"


# -- processes ------------------------------------------------------------------

def pid_alive(pid):
    """True while pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def descendants(pid):
    """Every descendant of pid, from /proc/<pid>/task/*/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for t in os.listdir("/proc/%d/task" % p):
                with contextlib.suppress(OSError, ValueError):
                    with open("/proc/%d/task/%s/children" % (p, t)) as f:
                        kids = [int(x) for x in f.read().split()]
                    out += kids
                    todo += kids
    return out


def wait_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(pid_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return not any(pid_alive(p) for p in pids)


def stop_pid_tree(pid, proc=None, timeout=15, children_first=False):
    """SIGTERM pid and wait for it and its descendants; SIGKILL (by pid) what
    is left after timeout. proc: the Popen object if pid is our child (it is
    reaped). children_first: SIGTERM the descendants first and give pid a
    moment to reap them (a parent that exits first leaves them to init).
    Returns the pids that had to be killed."""
    kids = descendants(pid)
    if children_first and kids:
        for p in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGTERM)
        wait_gone(kids, 3)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    wait_gone([pid], timeout if proc is None else 0.5)
    kids += descendants(pid)
    if not wait_gone(kids, 2):
        for p in kids:  # session processes the parent left behind
            if pid_alive(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGTERM)
        wait_gone(kids, 3)
    killed = []
    for p in [pid] + kids:
        if pid_alive(p):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
                killed.append(p)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
    wait_gone([pid] + kids, 10)
    return killed


# -- the second client's helpers (all servers) ---------------------------------------

def raw_name(folder):
    """The raw (modified UTF-7) name of a folder given by display name."""
    return "INBOX" if folder.upper() == "INBOX" else mutf7_encode(folder)


def _check(typ, data, what):
    if typ != "OK":
        raise imaplib.IMAP4.error("%s: %s %r" % (what, typ, data))
    return data


class SecondClient:
    """Second-client helpers for a server class that has _conn(imap) (an
    imaplib connection, logged in, closed afterwards) and list_folders().
    Folder arguments are display names (UTF-8); '/' is the delimiter on every
    server used here. Helpers that change flags re-select the folder before
    they return, because imap4d writes flag changes only then."""

    def capabilities(self, imap=None):
        with self._conn(imap) as c:
            typ, data = c.capability()
            caps = set(" ".join(x.decode() for x in data if x).upper().split())
        return caps

    def rename(self, old, new, imap=None):
        with self._conn(imap) as c:
            _check(*c.rename(quote(raw_name(old)), quote(raw_name(new))), "RENAME %s %s" % (old, new))

    def delete(self, name, imap=None):
        with self._conn(imap) as c:
            _check(*c.delete(quote(raw_name(name))), "DELETE %s" % name)

    def store_flags(self, folder, uids, op, flags, imap=None):
        """UID STORE uids op (flags); op is '+FLAGS' or '-FLAGS' (or 'FLAGS').
        uids: an int or a list of them; flags: a string or a list."""
        if isinstance(uids, int):
            uids = [uids]
        if not isinstance(flags, str):
            flags = " ".join(flags)
        box = quote(raw_name(folder))
        with self._conn(imap) as c:
            _check(*c.select(box), "SELECT %s" % folder)
            _check(*c.uid("STORE", ",".join(str(u) for u in uids), op + ".SILENT",
                          "(%s)" % flags), "UID STORE")
            _check(*c.select(box), "SELECT %s again" % folder)

    def expunge_uids(self, folder, uids, imap=None):
        """Mark uids \\Deleted and expunge them: UID EXPUNGE where UIDPLUS is
        offered, else EXPUNGE (which also removes any other \\Deleted mail)."""
        if isinstance(uids, int):
            uids = [uids]
        box = quote(raw_name(folder))
        spec = ",".join(str(u) for u in uids)
        with self._conn(imap) as c:
            caps = self.capabilities(c)
            _check(*c.select(box), "SELECT %s" % folder)
            _check(*c.uid("STORE", spec, "+FLAGS.SILENT", r"(\Deleted)"), "UID STORE \\Deleted")
            if "UIDPLUS" in caps:
                _check(*c.uid("EXPUNGE", spec), "UID EXPUNGE")
            else:
                _check(*c.expunge(), "EXPUNGE")
            _check(*c.select(box), "SELECT %s again" % folder)

    def permanent_flags(self, folder="INBOX", imap=None):
        """The PERMANENTFLAGS a SELECT of folder announces (a set; '\\*' in it
        means that new keywords may be made)."""
        with self._conn(imap) as c:
            _check(*c.select(quote(raw_name(folder))), "SELECT %s" % folder)
            typ, data = c.response("PERMANENTFLAGS")
            with contextlib.suppress(Exception):
                c.close()
        for d in data or []:
            if d:
                m = re.match(rb"\(([^)]*)\)", d)
                if m:
                    return set(m.group(1).decode().split())
        return set()

    def allows_keywords(self, folder="INBOX", imap=None):
        return "\\*" in self.permanent_flags(folder, imap)

    def delimiter(self, imap=None):
        for _name, _raw, delim, _flags in self.list_folders(imap):
            if delim:
                return delim
        return "/"

    def selectable(self, imap=None):
        """Display names of the folders LIST shows that can be selected."""
        out = []
        for name, _raw, _delim, flags in self.list_folders(imap):
            low = {f.lower() for f in flags}
            if "\\noselect" in low or "\\nonexistent" in low:
                continue
            out.append(name)
        return out

    def uid_flags(self, folder, imap=None):
        """{uid: set(flags)} of one folder, read-only (EXAMINE), \\Recent left out."""
        with self._conn(imap) as c:
            typ, data = c.select(quote(raw_name(folder)), readonly=True)
            _check(typ, data, "EXAMINE %s" % folder)
            out = {}
            if int(data[0] or 0):
                typ, data = c.uid("FETCH", "1:*", "(UID FLAGS)")
                _check(typ, data, "UID FETCH")
                for line in data:
                    if isinstance(line, tuple):
                        line = line[0]
                    if not line:
                        continue
                    u = re.search(rb"\bUID (\d+)", line)
                    f = re.search(rb"\bFLAGS \(([^)]*)\)", line)
                    if u and f:
                        out[int(u.group(1))] = set(f.group(1).decode().split()) - {"\\Recent"}
            with contextlib.suppress(Exception):
                c.close()
        return out

    def snapshot(self, include_deleted=False, imap=None):
        """The oracle: {folder display name: {uid: set(flags)}} of every
        selectable folder; messages flagged \\Deleted are left out unless
        include_deleted (the mount hides them)."""
        out = {}
        with self._conn(imap) as c:
            for name in self.selectable(c):
                flags = self.uid_flags(name, c)
                if not include_deleted:
                    flags = {u: f for u, f in flags.items() if "\\Deleted" not in f}
                out[name] = flags
        return out

    def bodies(self, folder, uids=None, imap=None):
        """{uid: BODY.PEEK[] bytes} of a folder (all, or the given uids)."""
        with self._conn(imap) as c:
            typ, data = c.select(quote(raw_name(folder)), readonly=True)
            _check(typ, data, "EXAMINE %s" % folder)
            spec = ",".join(str(u) for u in uids) if uids else "1:*"
            typ, data = c.uid("FETCH", spec, "(UID BODY.PEEK[])")
            _check(typ, data, "UID FETCH BODY.PEEK[]")
            with contextlib.suppress(Exception):
                c.close()
        out = {}
        for part in data:
            if isinstance(part, tuple):
                m = re.search(rb"\bUID (\d+)", part[0])
                if m:
                    out[int(m.group(1))] = part[1]
        if len(out) < sum(isinstance(p, tuple) for p in data):
            # UID came after the literal: take it from the closing part
            out = {}
            pending = None
            for part in data:
                if isinstance(part, tuple):
                    pending = part[1]
                    m = re.search(rb"\bUID (\d+)", part[0])
                    if m:
                        out[int(m.group(1))] = pending
                        pending = None
                elif pending is not None and part:
                    m = re.search(rb"\bUID (\d+)", part)
                    if m:
                        out[int(m.group(1))] = pending
                    pending = None
        return out


class DovecotServer(SecondClient, harness.Dovecot):
    """harness.Dovecot with the second-client helpers and a kind."""

    def __init__(self, kind="dovecot", **kw):
        super().__init__(**kw)
        self.kind = kind


def dovecot_reduced(**kw):
    """A Dovecot that offers only IMAP4rev1 LITERAL+ SASL-IR ID IDLE (and still
    executes hidden commands: only its rawlog proves the fallback ran)."""
    return DovecotServer(kind="dovecot-reduced", imap_capability=DOVECOT_REDUCED_CAPABILITY, **kw)


# -- what Cyrus and imap4d share ----------------------------------------------------

class _PrivateServer(SecondClient):
    """A private server process under one temporary directory (0755, so the
    unprivileged server user can walk into it), with TLS from a throwaway
    CA naming localhost and 127.0.0.1."""

    kind = None
    user = "alice"
    password = "s3cret-Pw"
    prefix = "convoyfs-server-"

    # the imaplib client side is the one harness.Dovecot has
    session = harness.Dovecot.session
    _conn = harness.Dovecot._conn
    append = harness.Dovecot.append
    list_folders = harness.Dovecot.list_folders
    fetch_folder = harness.Dovecot.fetch_folder
    flags_of = harness.Dovecot.flags_of
    ssl_context = harness.Dovecot.ssl_context
    write_password = harness.Dovecot.write_password
    password_command = harness.Dovecot.password_command

    def __init__(self, workdir=None):
        self.own_dir = workdir is None
        self.dir = workdir or tempfile.mkdtemp(prefix=self.prefix)
        os.chmod(self.dir, 0o755)
        self.port = None
        self.plain_port = None
        self.proc = None
        self.pid = None
        self.pki = os.path.join(self.dir, "pki")
        os.makedirs(self.pki, exist_ok=True)
        self.ca = harness.CA(self.pki, "ca")
        self.ca_file = self.ca.cert
        self.cert, self.key = self.ca.issue("server", ["localhost"], ["127.0.0.1"])
        self.password_file = os.path.join(self.dir, "password")
        self.write_password(self.password)

    @classmethod
    def missing(cls):
        """Why this server cannot run here (a sentence), or None."""
        return None

    def create(self, name, imap=None):
        """CREATE a folder by display name; a folder that exists is fine (Cyrus
        and imap4d say so without the ALREADYEXISTS code). Returns the raw name."""
        raw = raw_name(name)
        with self._conn(imap) as c:
            typ, data = c.create(quote(raw))
            if typ != "OK":
                text = b" ".join(x for x in data if x).lower()
                if b"exist" not in text:
                    raise imaplib.IMAP4.error("CREATE %s: %r" % (raw, data))
        return raw

    def append_many(self, folder, items, imap=None, create=True):
        """APPEND (bytes, datetime or None, flags) items as harness.Dovecot does
        (pipelined; the folder made first); return UIDs (None where the
        server gives no APPENDUID)."""
        with self._conn(imap) as c:
            if create and raw_name(folder) != "INBOX":
                self.create(folder, c)
            return harness.Dovecot.append_many(self, folder, items, imap=c, create=False)

    def url(self, host="127.0.0.1", scheme="imaps"):
        port = self.port if scheme == "imaps" else self.plain_port
        return "%s://%s@%s:%d" % (scheme, urllib.parse.quote(self.user, safe=""), host, port)

    def imap(self, host="127.0.0.1"):
        """A logged-in imaplib connection over TLS that verifies the test CA."""
        c = imaplib.IMAP4_SSL(host, self.port, ssl_context=self.ssl_context(), timeout=60)
        try:
            c.login(self.user, self.password)
        except BaseException:
            with contextlib.suppress(Exception):
                c.shutdown()
            raise
        return c

    def _answers(self):
        """True once a verified TLS connection on the imaps port gets a greeting."""
        try:
            c = imaplib.IMAP4_SSL("127.0.0.1", self.port, ssl_context=self.ssl_context(),
                                  timeout=5)
            c.logout()
            return True
        except (OSError, imaplib.IMAP4.error):
            return False

    def _wait_ready(self, timeout):
        def ready():
            if not self.running():
                raise RuntimeError("%s exited before it answered:\n%s" % (
                    self.kind, self.diagnostics()))
            return self._answers()
        try:
            harness.wait_until(ready, timeout, interval=0.1, what="%s to listen" % self.kind)
        except BaseException:
            self.stop()
            raise

    def running(self):
        return self.pid is not None and pid_alive(self.pid)

    def processes(self):
        """The server's pid and its descendants' (empty once stopped)."""
        if not self.running():
            return []
        return [self.pid] + descendants(self.pid)

    def cleanup(self):
        self.stop()
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    def log_files(self):
        return []

    def diagnostics(self):
        out = []
        for p in self.log_files():
            with contextlib.suppress(OSError):
                with open(p, errors="replace") as f:
                    out.append("--- %s\n%s" % (p, f.read()[-4000:]))
        return "\n".join(out)


def _chown_tree(path, uid, gid):
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            with contextlib.suppress(OSError):
                os.chown(os.path.join(root, n), uid, gid, follow_symlinks=False)


# -- Cyrus IMAP ------------------------------------------------------------------------

class Cyrus(_PrivateServer):
    """A private Cyrus IMAP 3.6: master (-d, -p pidfile) started as root,
    which runs imapd (implicit TLS with -s on `port`, plain on `plain_port`)
    and idled as user cyrus. altnamespace and unixhierarchysep make folders
    top level with '/' as the delimiter, like Dovecot. The user is in a
    sasldb of its own (realm localhost = servername); INBOX, Sent and Trash
    (special-use \\Sent, \\Trash) are made at first login. IDLE is pushed
    within a second (idled + imapidlepoll: 1). Cyrus logs only to syslog;
    master's own output goes to master.log."""

    kind = "cyrus"
    prefix = "convoyfs-cyrus-"

    def __init__(self, workdir=None):
        super().__init__(workdir)
        self.conf = os.path.join(self.dir, "imapd.conf")
        self.cyrus_conf = os.path.join(self.dir, "cyrus.conf")
        self.pidfile = os.path.join(self.dir, "run", "master.pid")
        self.master_log = os.path.join(self.dir, "master.log")
        self._users_made = False

    @classmethod
    def missing(cls):
        for p in (CYRUS_MASTER, CYRUS_IMAPD, CYRUS_IDLED, SASLPASSWD2):
            if not os.access(p, os.X_OK):
                return "%s is absent (tools/install-deps installs cyrus-common and " \
                       "sasl2-bin and unpacks cyrus-imapd into %s)" % (p, CYRUS_DIR)
        try:
            pwd.getpwnam("cyrus")
        except KeyError:
            return "there is no user cyrus (the cyrus-common package makes it)"
        if os.geteuid() != 0:
            return "Cyrus master must start as root (it switches to user cyrus)"
        return None

    def _write_conf(self):
        d = self.dir
        for sub in ("conf", "conf/proc", "conf/socket", "spool", "sieve", "lock", "run", "tmp"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        conf = {
            "configdirectory": d + "/conf",
            "defaultpartition": "default",
            "partition-default": d + "/spool",
            "sievedir": d + "/sieve",
            "proc_path": d + "/conf/proc",
            "mboxname_lockpath": d + "/lock",
            "lmtpsocket": d + "/conf/socket/lmtp",
            "idlesocket": d + "/conf/socket/idle",
            "notifysocket": d + "/conf/socket/notify",
            "temp_path": d + "/tmp",
            "servername": "localhost",
            "altnamespace": "yes",
            "unixhierarchysep": "yes",
            "allowplaintext": "yes",
            "sasl_pwcheck_method": "auxprop",
            "sasl_auxprop_plugin": "sasldb",
            "sasl_sasldb_path": d + "/sasldb2",
            "sasl_mech_list": "PLAIN LOGIN",
            "autocreate_quota": "0",
            "autocreate_inbox_folders": "Sent | Trash",
            "xlist-sent": "Sent",
            "xlist-trash": "Trash",
            "imapidlepoll": "1",
            "tls_server_cert": self.cert,
            "tls_server_key": self.key,
            "tls_sessions_db_path": d + "/conf/tls_sessions.db",
            "tls_session_timeout": "0",
            "syslog_prefix": "convoyfs-cyrus-%d" % self.port,
            "umask": "077",
            "hashimapspool": "false",
            "maxlogintrys": "1000",
        }
        with open(self.conf, "w") as f:
            f.write("# generated by tests/integration/servers.py\n")
            for k, v in conf.items():
                f.write("%s: %s\n" % (k, v))
        c = "-C " + self.conf
        with open(self.cyrus_conf, "w") as f:
            f.write("# generated by tests/integration/servers.py\n"
                    "START {\n"
                    '  recover cmd="%s/ctl_cyrusdb %s -r"\n'
                    "}\n"
                    "SERVICES {\n"
                    '  imaps cmd="%s -s %s" listen="127.0.0.1:%d" prefork=0 maxchild=100\n'
                    '  imap cmd="%s %s" listen="127.0.0.1:%d" prefork=0 maxchild=100\n'
                    "}\n"
                    "EVENTS {\n"
                    '  checkpoint cmd="%s/ctl_cyrusdb %s -c" period=30\n'
                    "}\n"
                    "DAEMON {\n"
                    '  idled cmd="%s %s"\n'
                    "}\n" % (CYRUS_BIN, c, CYRUS_IMAPD, c, self.port, CYRUS_IMAPD, c,
                             self.plain_port, CYRUS_BIN, c, CYRUS_IDLED, c))

    def _make_user(self):
        r = subprocess.run([SASLPASSWD2, "-p", "-c", "-f", os.path.join(self.dir, "sasldb2"),
                            "-u", "localhost", self.user], input=(self.password + "\n").encode(),
                           capture_output=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError("saslpasswd2 failed: %s" % r.stderr.decode(errors="replace"))

    def start(self, timeout=30):
        if self.port is None:
            self.port = harness.free_port()
            self.plain_port = harness.free_port()
        self._write_conf()
        if not self._users_made:
            self._make_user()
            self._users_made = True
        cy = pwd.getpwnam("cyrus")
        _chown_tree(self.dir, cy.pw_uid, cy.pw_gid)
        with contextlib.suppress(OSError):
            os.unlink(self.pidfile)
        # -d: master forks, and its parent exits once the child has started
        r = subprocess.run([CYRUS_MASTER, "-C", self.conf, "-M", self.cyrus_conf,
                            "-p", self.pidfile, "-d", "-L", self.master_log],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        try:
            harness.wait_until(self._read_pid, 10, what="cyrus master.pid")
        except TimeoutError:
            raise RuntimeError("cyrus master did not start (exit %s): %s\n%s" % (
                r.returncode, r.stderr.decode(errors="replace"), self.diagnostics())) from None
        self.pid = self._read_pid()
        self._wait_ready(timeout)
        return self

    def _read_pid(self):
        try:
            with open(self.pidfile) as f:
                pid = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def stop(self, timeout=15):
        """SIGTERM to master's pid (it ends its children), wait; SIGKILL by pid
        for whatever is left after timeout."""
        if self.pid is None:
            return
        self.killed = stop_pid_tree(self.pid, None, timeout)
        self.pid = None

    def log_files(self):
        return [self.master_log]


# -- GNU Mailutils imap4d --------------------------------------------------------------

class Imap4d(_PrivateServer):
    """A private GNU Mailutils imap4d in the foreground (mode daemon, foreground
    yes), stopped by its pid. The user alice@localhost comes from a
    virtdomain passwd file (DIR/vd/localhost) with a crypt(3) hash; it maps
    to uid nobody. INBOX is maildir DIR/home/INBOX, other folders are
    maildirs under DIR/home/Mail with '/' as the delimiter. `port` speaks
    TLS from the first byte, `plain_port` STARTTLS. Each session's
    transcript goes to imap4d.log.

    imap4d writes a flag change to disk only when the storing session
    closes or re-selects the mailbox (SecondClient.store_flags re-selects)."""

    kind = "imap4d"
    user = "alice@localhost"
    prefix = "convoyfs-imap4d-"

    def __init__(self, workdir=None, transcript=True):
        super().__init__(workdir)
        self.conf = os.path.join(self.dir, "imap4d.conf")
        self.pidfile = os.path.join(self.dir, "imap4d.pid")
        self.log_path = os.path.join(self.dir, "imap4d.log")
        self.home = os.path.join(self.dir, "home")
        self.transcript = transcript

    @classmethod
    def missing(cls):
        if not os.access(IMAP4D, os.X_OK):
            return "%s is absent (tools/install-deps installs mailutils-imap4d)" % IMAP4D
        if os.geteuid() != 0:
            return "imap4d with virtual domains must start as root (it switches to the " \
                   "mail user)"
        return None

    def _passwd_hash(self):
        r = subprocess.run(["openssl", "passwd", "-6", "-stdin"],
                           input=self.password.encode(), capture_output=True, check=True)
        return r.stdout.decode().strip()

    def _write_conf(self):
        nobody = pwd.getpwnam("nobody")
        vd = os.path.join(self.dir, "vd")
        os.makedirs(vd, exist_ok=True)
        local, _, domain = self.user.partition("@")
        for sub in ("INBOX", "Mail"):
            p = os.path.join(self.home, sub)
            os.makedirs(p, exist_ok=True)
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(self.home, "INBOX", sub), exist_ok=True)
        _chown_tree(self.home, nobody.pw_uid, nobody.pw_gid)
        with open(os.path.join(vd, domain), "w") as f:
            f.write("%s:%s:%d:%d:test user:%s:/bin/false\n" % (
                local, self._passwd_hash(), nobody.pw_uid, nobody.pw_gid, self.home))
        os.chmod(os.path.join(vd, domain), 0o600)
        with open(self.conf, "w") as f:
            f.write("""# generated by tests/integration/servers.py
mode daemon;
foreground yes;
pidfile "{pidfile}";
max-children 100;
logging {{
  syslog no;
  session-id yes;
}};
transcript {transcript};
virtdomain {{
  passwd-dir "{vd}";
}};
auth {{
  authentication generic;
  authorization virtdomain;
}};
mailbox {{
  mail-spool "maildir://{home}/INBOX";
  mailbox-type maildir;
}};
namespace personal {{
  prefix "" {{
    directory "{home}/Mail";
    delimiter "/";
    mailbox-type maildir;
  }};
}};
tls-file-checks {{
  key-file none;
  cert-file none;
  ca-file none;
}};
tls {{
  ssl-certificate-file "{cert}";
  ssl-key-file "{key}";
}};
server 127.0.0.1:{port} {{
  tls-mode connection;
}};
server 127.0.0.1:{plain_port} {{
  tls-mode stls;
}};
""".format(pidfile=self.pidfile, vd=vd, home=self.home, cert=self.cert, key=self.key,
           port=self.port, plain_port=self.plain_port,
           transcript="yes" if self.transcript else "no"))

    def start(self, timeout=20):
        if self.port is None:
            self.port = harness.free_port()
            self.plain_port = harness.free_port()
        self._write_conf()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([IMAP4D, "--config-file=" + self.conf, "--no-site-config"],
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=self.dir)
        self.pid = self.proc.pid
        self._wait_ready(timeout)
        return self

    def stop(self, timeout=15):
        """SIGTERM to imap4d's pid and its session children; SIGKILL by pid for
        whatever is left after timeout."""
        if self.pid is None:
            return
        self.killed = stop_pid_tree(self.pid, self.proc, timeout, children_first=True)
        self.pid = None
        self.proc = None
        with contextlib.suppress(Exception):
            self._log.close()

    def append_many(self, folder, items, imap=None, create=True):
        """APPEND as harness.Dovecot does, then SELECT the folder read-write and
        UNSELECT it: imap4d leaves the last appended message in maildir new/
        with no UID on disk, and every read-only session then gives it a new
        UID; a read-write SELECT moves it to cur/ with a fixed UID."""
        with self._conn(imap) as c:
            res = _PrivateServer.append_many(self, folder, items, imap=c, create=create)
            self.settle(folder, c)
        return res

    def settle(self, folder, imap=None):
        """SELECT folder read-write and UNSELECT it, so imap4d writes what it
        holds in memory (UIDs of new mail, flags) to the maildir."""
        with self._conn(imap) as c:
            _check(*c.select(quote(raw_name(folder))), "SELECT %s" % folder)
            _check(*c.unselect(), "UNSELECT")

    def log_files(self):
        return [self.log_path]

    def log_text(self):
        with contextlib.suppress(OSError):
            with open(self.log_path, errors="replace") as f:
                return f.read()
        return ""


# -- the oracle: a mount against a server ------------------------------------------------

XATTR = "user.convoyfs."


def _xattr(path, name):
    try:
        return os.getxattr(path, XATTR + name).decode("utf-8", "replace")
    except OSError as e:
        if e.errno == errno.ENODATA:
            return ""
        raise


def mount_tree(root, skip=(harness.CONTROL_DIR, harness.CONVERSATIONS)):
    """{directory path relative to root: {uid: frozenset(flags)}} of every folder
    directory of a mount (from the xattrs user.convoyfs.uid and .flags), or
    None if the tree changed under the walk. A UID shown twice in one
    directory is kept as a key "<uid> (again: file name)", which equals
    nothing on a server."""
    out = {}
    try:
        for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
            rel = os.path.relpath(dirpath, root)
            if rel == ".":
                dirnames[:] = [d for d in dirnames if d not in skip]
                continue
            msgs = {}
            for f in filenames:
                p = os.path.join(dirpath, f)
                uid = int(_xattr(p, "uid"))
                flags = frozenset(_xattr(p, "flags").split())
                if uid in msgs:
                    msgs["%d (again: %s)" % (uid, f)] = flags
                else:
                    msgs[uid] = flags
            out[rel] = msgs
    except FileNotFoundError:
        return None
    return out


def _raise(e):
    raise e


def server_tree(server, imap=None, tries=3):
    """What the mount must show for a server, as mount_tree() gives it: every
    folder LIST returns as a directory (its path with the delimiter made '/'),
    with its parents; {uid: flags} of the messages not flagged \\Deleted in
    each selectable folder, {} for the others. A connection that breaks (a
    server busy with a client that reconnects in a loop) is tried again."""
    for i in range(tries):
        try:
            return _server_tree(server, imap)
        except (imaplib.IMAP4.abort, OSError):
            if imap is not None or i == tries - 1:
                raise
            time.sleep(1)


def _server_tree(server, imap=None):
    out = {}
    with server._conn(imap) as c:
        folders = server.list_folders(c)
        for name, raw, delim, flags in folders:
            parts = name.split(delim) if delim else [name]
            for i in range(1, len(parts)):
                out.setdefault("/".join(parts[:i]), {})
            rel = "/".join(parts)
            low = {f.lower() for f in flags}
            if "\\noselect" in low or "\\nonexistent" in low:
                out.setdefault(rel, {})
                continue
            out[rel] = {u: frozenset(f) for u, f in server.uid_flags(name, c).items()
                        if "\\Deleted" not in f}
    return out


def tree_diff(got, want, limit=30):
    """Lines telling how a mount tree differs from the server's ([] if equal)."""
    if got is None:
        return ["the mount changed while it was walked"]
    out = []
    for d in sorted(set(got) | set(want)):
        if d not in want:
            out.append("directory %r is in the mount but not on the server (%d files)"
                       % (d, len(got[d])))
            continue
        if d not in got:
            out.append("folder %r (%d messages) is missing from the mount" % (d, len(want[d])))
            continue
        g, w = got[d], want[d]
        extra = sorted((k for k in g if k not in w), key=str)
        missing = sorted(k for k in w if k not in g)
        if extra:
            out.append("%s: UIDs in the mount, not on the server: %s" % (d, _few(extra)))
        if missing:
            out.append("%s: UIDs on the server, not in the mount: %s" % (d, _few(missing)))
        for u in sorted(k for k in w if k in g and g[k] != w[k]):
            out.append("%s: UID %s flags %s in the mount, %s on the server" % (
                d, u, sorted(g[u]), sorted(w[u])))
    if len(out) > limit:
        out = out[:limit] + ["... and %d more differences" % (len(out) - limit)]
    return out


def _few(items, n=12):
    s = ", ".join(str(x) for x in items[:n])
    return s + (" ... (%d in all)" % len(items) if len(items) > n else "")


def sync_now(mount):
    """Ask the mount to refresh every folder now (.convoyfs/ctl "sync")."""
    with open(os.path.join(mount.path, harness.CONTROL_DIR, "ctl"), "w") as f:
        f.write("sync\n")


def converge(mount, server, timeout=30, trigger=True, what="the mount to equal the server"):
    """Wait until mount_tree(mount) equals server_tree(server); with trigger,
    ask for a sync first and wait for state: idle. Raises AssertionError
    with the differences if they remain after timeout. Returns the tree."""
    if trigger:
        sync_now(mount)
        mount.wait_idle(timeout)
    want = server_tree(server)
    last = [None]

    def same():
        if mount.proc is not None and mount.proc.poll() is not None:
            raise RuntimeError("convoyfs exited with %d:\n%s" % (mount.proc.returncode,
                                                                 mount.stderr()[-4000:]))
        last[0] = mount_tree(mount.path)
        return last[0] == want
    try:
        harness.wait_until(same, timeout, interval=0.25, what=what)
    except TimeoutError as e:
        # the server may have moved on meanwhile: compare with it once more
        want = server_tree(server)
        got = mount_tree(mount.path)
        if got == want:
            return got
        raise AssertionError("%s:\n  %s" % (e, "\n  ".join(tree_diff(got, want)))) from None
    return last[0]


# -- by kind -----------------------------------------------------------------------------

KINDS = ["dovecot", "dovecot-reduced", "cyrus", "imap4d"]


def missing(kind):
    """Why a server kind cannot run here, or None."""
    if kind in ("dovecot", "dovecot-reduced"):
        if not os.access(harness.DOVECOT, os.X_OK):
            return "%s is absent (tools/install-deps installs dovecot-imapd)" % harness.DOVECOT
        return None
    return {"cyrus": Cyrus, "imap4d": Imap4d}[kind].missing()


def make(kind, **kw):
    """An unstarted server of the given kind."""
    if kind == "dovecot":
        return DovecotServer(**kw)
    if kind == "dovecot-reduced":
        return dovecot_reduced(**kw)
    if kind == "cyrus":
        return Cyrus(**kw)
    if kind == "imap4d":
        return Imap4d(**kw)
    raise ValueError("unknown server kind %r" % kind)
