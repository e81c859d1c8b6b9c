"""Connecting: STARTTLS and daemon mode work; a wrong CA, a wrong host name,
a wrong password, an unreachable or silent server and a server without TLS
each end convoyfs at once with one line saying which, and leave no mount."""

import os
import re
import socket
import subprocess
import time

import pytest

import harness

REASONS = {
    "ca": r"cannot verify certificate",
    "host": r"does not match host name",
    "password": r"login .*refused",
    "unreachable": r"cannot connect to",
}


class Refusal:
    def __init__(self, rc, stderr, elapsed, mountpoint):
        self.rc = rc
        self.stderr = stderr
        self.lines = [l for l in stderr.splitlines() if l.strip()]
        self.elapsed = elapsed
        self.mountpoint = mountpoint

    def check(self, reason, limit):
        assert self.rc is not None, "convoyfs still ran after %.0f s:\n%s" % (limit, self.stderr)
        assert self.rc != 0, "convoyfs exited 0:\n%s" % self.stderr
        assert len(self.lines) == 1, "want one line on stderr, got:\n%s" % self.stderr
        if reason:
            assert re.search(REASONS[reason], self.lines[0]), self.lines[0]
            for other, pat in REASONS.items():
                if other != reason:
                    assert not re.search(pat, self.lines[0]), self.lines[0]
        assert self.elapsed < limit
        assert not harness.mounted(self.mountpoint), "a mount was left behind"
        assert os.path.isdir(self.mountpoint) and os.listdir(self.mountpoint) == []
        assert "==ERROR" not in self.stderr


def attempt(argv, mountpoint, limit=30):
    """Run convoyfs expecting it to give up; clean up if it did not."""
    os.makedirs(mountpoint, exist_ok=True)
    errpath = mountpoint.rstrip("/") + ".stderr"
    with open(errpath, "wb") as err:
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        try:
            rc = p.wait(limit)
        except subprocess.TimeoutExpired:
            rc = None
        elapsed = time.monotonic() - t0
    left_mounted = harness.mounted(mountpoint)
    if left_mounted:
        harness.fusermount(mountpoint, lazy=True)
    if p.poll() is None:
        p.kill()
        p.wait(10)
    with open(errpath, "rb") as f:
        stderr = f.read().decode("utf-8", errors="replace")
    r = Refusal(rc, stderr, elapsed, mountpoint)
    if left_mounted:
        r.lines.append("(it had mounted %s)" % mountpoint)
    return r


def argv_for(binary, url, mountpoint, cafile, password_command, cache_dir, foreground=True,
             timeout=5):
    opts = "cafile=%s,password_command=%s,cache_dir=%s,timeout=%d" % (
        cafile, password_command, cache_dir, timeout)
    return [binary] + (["-f"] if foreground else []) + ["-o", opts, url, mountpoint]


@pytest.fixture
def run(tmp_path, convoyfs_bin):
    counter = [0]

    def go(url, cafile, password_command, foreground=True, limit=30, timeout=5):
        counter[0] += 1
        mp = str(tmp_path / ("mnt%d" % counter[0]))
        return attempt(argv_for(convoyfs_bin, url, mp, cafile, password_command,
                                str(tmp_path / ("cache%d" % counter[0])), foreground, timeout),
                       mp, limit)
    return go


@pytest.mark.parametrize("foreground", [True, False], ids=["foreground", "daemon"])
def test_wrong_ca(dovecot, run, foreground):
    mark = dovecot.rawlog_mark()
    other = dovecot.other_ca()
    r = run(dovecot.url(), other.cert, dovecot.password_command(), foreground)
    r.check("ca", 20)
    assert dovecot.rawlog_sessions(mark) == [], "it logged in despite the certificate"


def test_wrong_host_name(dovecot_factory, run):
    d = dovecot_factory(server_names=("wrong.example",))
    r = run(d.url("127.0.0.1"), d.ca_file, d.password_command())
    r.check("host", 20)
    r = run(d.url("localhost"), d.ca_file, d.password_command())
    r.check("host", 20)
    assert d.rawlog_sessions() == [], "it logged in despite the host name"
    assert "Login: user=<" not in d.log_text()


@pytest.mark.parametrize("foreground", [True, False], ids=["foreground", "daemon"])
def test_wrong_password(dovecot, run, tmp_path, foreground):
    wrong = "wrong-Pw-%d" % foreground
    cmd = dovecot.write_password(wrong, str(tmp_path / "wrong-password"))
    r = run(dovecot.url(), dovecot.ca_file, cmd, foreground)
    r.check("password", 20)
    assert wrong not in r.stderr and dovecot.password not in r.stderr


def test_unreachable_server(run, dovecot):
    port = harness.free_port()
    r = run("imaps://alice@127.0.0.1:%d" % port, dovecot.ca_file, dovecot.password_command())
    r.check("unreachable", 20)
    assert str(port) in r.lines[0]


def test_silent_server_times_out(run, dovecot):
    # accepts TCP connections (the kernel does) but never says a word
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        r = run("imaps://alice@127.0.0.1:%d" % s.getsockname()[1], dovecot.ca_file,
                dovecot.password_command(), timeout=2, limit=30)
    r.check(None, 25)


@pytest.mark.parametrize("caps,reply", [
    ("IMAP4rev1 AUTH=PLAIN LOGIN", "BAD no STARTTLS here"),
    ("IMAP4rev1 STARTTLS AUTH=PLAIN", "NO not now"),
], ids=["not-offered", "refused"])
def test_starttls_is_required(run, dovecot, caps, reply):
    fake = harness.FakeImapServer(capabilities=caps, starttls_reply=reply)
    try:
        r = run("imap://alice@127.0.0.1:%d" % fake.port, dovecot.ca_file,
                dovecot.password_command())
        r.check(None, 20)
        assert fake.credentials_sent() == [], "credentials sent in clear: %r" % fake.lines
    finally:
        fake.close()


def small_server(factory, n=12):
    d = factory()
    items = list(harness.genmail.gen_messages(n, 77))
    d.append_many("INBOX", [(m, w, ()) for m, w in items])
    return d, sorted(m for m, _ in items)


def test_starttls_mount(dovecot_factory, mount):
    d, bodies = small_server(dovecot_factory)
    m = mount(d, scheme="imap")
    inbox = os.path.join(m.path, "INBOX")
    names = sorted(os.listdir(inbox))
    got = []
    for n in names:
        with open(os.path.join(inbox, n), "rb") as f:
            got.append(f.read())
    assert sorted(got) == bodies
    logins = [l for l in d.log_text().splitlines() if "Login: user=<alice>" in l
              and "lport=%d," % d.plain_port in l]
    assert logins, d.log_text()
    assert all(", TLS," in l for l in logins), logins


def test_mount_by_host_name(dovecot_factory, mount):
    # the certificate names localhost; convoyfs must also find the server
    # where localhost also resolves to ::1 (Dovecot listens on 127.0.0.1 only)
    d, bodies = small_server(dovecot_factory, 3)
    m = mount(d, host="localhost")
    assert len(os.listdir(os.path.join(m.path, "INBOX"))) == 3


def test_daemon_mode_mounts_and_unmounts(dovecot_factory, tmp_path, convoyfs_bin):
    d, bodies = small_server(dovecot_factory, 5)
    mp = str(tmp_path / "mnt")
    os.makedirs(mp)
    argv = argv_for(convoyfs_bin, d.url(), mp, d.ca_file, d.password_command(),
                    str(tmp_path / "cache"), foreground=False)
    daemons = []
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=open(str(tmp_path / "daemon.stderr"), "wb"), timeout=60)
        assert r.returncode == 0, (tmp_path / "daemon.stderr").read_text()
        harness.wait_until(lambda: harness.mounted(mp), 10, what="the daemon's mount")
        daemons = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline_has(p, mp)]
        assert daemons, "no daemon process found"
        harness.wait_until(lambda: os.path.isdir(os.path.join(mp, "INBOX")) and
                           len(os.listdir(os.path.join(mp, "INBOX"))) == 5, 60,
                           what="INBOX to list 5 messages")
    finally:
        if harness.mounted(mp):
            assert harness.fusermount(mp).returncode == 0
        harness.wait_until(lambda: not any(_cmdline_has(p, mp) for p in daemons), 30,
                           what="the daemon to exit after unmount")
    assert not harness.mounted(mp)
    err = (tmp_path / "daemon.stderr").read_text()
    assert not [l for l in err.splitlines() if any(p.search(l) for p in harness.SANITIZER_PATTERNS)]


def _cmdline_has(pid, text):
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as f:
            return text.encode() in f.read().split(b"\0")
    except OSError:
        return False


def test_help_and_version(convoyfs_bin):
    r = subprocess.run([convoyfs_bin, "--version"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and re.search(r"\d+\.\d+", r.stdout + r.stderr)
    r = subprocess.run([convoyfs_bin, "--help"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0
    out = r.stdout + r.stderr
    for opt in ("password_command", "cafile", "cache_dir", "poll_interval"):
        assert opt in out, opt


def test_bad_arguments_are_one_clear_line(convoyfs_bin, tmp_path):
    mp = str(tmp_path / "mnt")
    os.makedirs(mp)
    for argv in ([convoyfs_bin, "-f", "http://alice@127.0.0.1", mp],
                 [convoyfs_bin, "-f", "imaps://alice@127.0.0.1"],
                 [convoyfs_bin, "-f", "-o", "no_such_option=1", "imaps://alice@127.0.0.1", mp]):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        assert r.returncode != 0, argv
        assert r.stderr.strip(), argv
        assert not harness.mounted(mp)
