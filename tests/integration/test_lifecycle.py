"""The mount's lifecycle: how it ends, where it may begin, and what it
needs from the command line.

- SIGINT and SIGTERM unmount and end convoyfs with status 0 within 2 s
  whenever they come: 20 fresh mounts signalled at random moments, most
  during a first sync of 3000 messages, mounts signalled while a `cat`
  waits on a stalled server, and a daemon.
- A directory that is a mount point already, a cache directory another
  convoyfs holds (a daemon too, across its fork), and a mount point with
  files in it (without -o nonempty) are refused with one line and status
  1, before the password is even asked for.
- Relative cafile= and cache_dir= still hold once the daemon runs from /.
- A password with CR or NUL, from password_command, ~/.netrc or the
  prompt, is refused with one line and status 1, and no login is tried.

Every convoyfs started here is unmounted and stopped by its pid on every
path; servers are the fixtures' (stopped by pid).
"""

import contextlib
import os
import pty
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import time

import pytest

import harness
from proxy import FaultProxy

STOP_LIMIT = 2.0  # seconds from a signal to the exit
LEFT = "did not stop within"  # the warning of a stop that left the sync's threads
ROUNDS = 20
N_BIG = 3000
N_SMALL = 6


# -- servers --------------------------------------------------------------------

@pytest.fixture(scope="module")
def big_server():
    """3000 messages (2400 in INBOX, 600 in Archive): a first sync long
    enough to be signalled in the middle of."""
    d = harness.Dovecot()
    try:
        d.start()
        items = list(harness.genmail.gen_messages(N_BIG, 5150))
        res = d.append_many("INBOX", [(m, w, ()) for m, w in items[:2400]])
        res += d.append_many("Archive", [(m, w, ()) for m, w in items[2400:]])
        assert not [r for r in res if isinstance(r, Exception)]
        yield d
    finally:
        d.cleanup()


@pytest.fixture(scope="module")
def small_server():
    """A few messages in INBOX; the tests only read it."""
    d = harness.Dovecot()
    try:
        d.start()
        items = list(harness.genmail.gen_messages(N_SMALL, 5151))
        res = d.append_many("INBOX", [(m, w, ()) for m, w in items])
        assert not [r for r in res if isinstance(r, Exception)]
        d.bodies = sorted(x["body"] for x in d.fetch_folder("INBOX").values())
        yield d
    finally:
        d.cleanup()


# -- helpers ----------------------------------------------------------------------

NO_COMMAND = False  # password_command: none (~/.netrc, then the prompt)


def options(server, cache_dir, password_command=None):
    opts = ["cafile=%s" % server.ca_file, "cache_dir=%s" % cache_dir, "timeout=10"]
    if password_command is not NO_COMMAND:
        opts.append("password_command=%s" % (password_command or server.password_command()))
    return ",".join(opts)


def argv_for(binary, server, mountpoint, cache_dir, foreground=True, **kw):
    return [binary] + (["-f"] if foreground else []) + [
        "-o", options(server, cache_dir, **kw), server.url(), str(mountpoint)]


def mount_count(path):
    """How many mounts sit on path in /proc/self/mounts. Only the parent
    is resolved: a look at the mount point itself would be a request to
    the daemon, which would wake a FUSE loop that a signal failed to."""
    path = os.path.join(os.path.realpath(os.path.dirname(str(path).rstrip("/"))),
                        os.path.basename(str(path).rstrip("/")))
    n = 0
    with open("/proc/self/mounts") as f:
        for line in f:
            mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[1])
            n += mp == path
    return n


class Refusal:
    def __init__(self, rc, output, elapsed):
        self.rc = rc
        self.output = output
        self.lines = [l for l in output.splitlines() if l.strip()]
        self.elapsed = elapsed

    def check(self, pattern, limit=10):
        assert self.rc == 1, "want exit status 1, got %r:\n%s" % (self.rc, self.output)
        assert len(self.lines) == 1, "want one line, got:\n%s" % self.output
        assert re.search(pattern, self.lines[0]), self.lines[0]
        assert "==ERROR" not in self.output and "runtime error" not in self.output
        assert self.elapsed < limit, "refused after %.1f s" % self.elapsed


def refuse(argv, mountpoint, tmp_path, limit=30, **popen):
    """Run a convoyfs -f that should give up; whatever it mounted is
    unmounted and the process killed by its pid if it still runs."""
    errpath = tmp_path / ("refusal-%d.out" % time.monotonic_ns())
    with open(errpath, "wb") as err:
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdout=err, stderr=err, **popen)
        try:
            rc = p.wait(limit)
        except subprocess.TimeoutExpired:
            rc = None
        elapsed = time.monotonic() - t0
    if mount_count(mountpoint) > 0 and rc is None:
        harness.fusermount(str(mountpoint), lazy=True)
    if p.poll() is None:
        p.kill()
        p.wait(10)
    return Refusal(rc, errpath.read_bytes().decode("utf-8", "replace"), elapsed)


def never_asked(tmp_path, server):
    """A password_command that leaves a mark when run, and the mark."""
    mark = tmp_path / ("asked-%d" % time.monotonic_ns())
    return "touch %s; %s" % (mark, server.password_command()), mark


def stop_by_signal(m, sig, limit=10):
    """Signal the daemon; (its exit status or None, seconds until it exited)."""
    t0 = time.monotonic()
    m.proc.send_signal(sig)
    try:
        rc = m.proc.wait(limit)
    except subprocess.TimeoutExpired:
        rc = None
    return rc, time.monotonic() - t0


def stored(cache_dir):
    """Messages in the store of a convoyfs that has exited."""
    db = os.path.join(cache_dir, "cache.db")
    if not os.path.exists(db):
        return 0
    con = sqlite3.connect(db, timeout=10)
    try:
        return con.execute("SELECT count(*) FROM messages WHERE uid > 0").fetchone()[0]
    finally:
        con.close()


def logins(server):
    return server.log_text().count("Login: user=<")


# -- 1. signals -------------------------------------------------------------------

def test_signals_at_random_moments(big_server, mount):
    """20 fresh mounts, each signalled (SIGINT and SIGTERM in turn) at a
    random moment: at once (the sync starting, the loop maybe not yet
    running), or up to 1.5 s later, mostly during the first sync."""
    rng = random.Random(20261130)
    rows, bad = [], []
    for i in range(ROUNDS):
        sig = (signal.SIGINT, signal.SIGTERM)[i % 2]
        delay = 0.0 if i % 4 == 0 else rng.uniform(0.0, 1.5)
        m = mount(big_server, name="sig%d" % i, wait_idle=False)
        time.sleep(delay)
        rc, took = stop_by_signal(m, sig)
        left = mount_count(m.path)
        n = stored(m.cache_dir) if rc is not None else -1
        rows.append("%2d %-7s after %.2f s: exit %s in %.2f s, %d mounts left, %d/%d stored%s" % (
            i, sig.name, delay, rc, took, left, n, N_BIG,
            " (left the sync running)" if LEFT in m.stderr() else ""))
        if rc != 0 or took >= STOP_LIMIT or left:
            bad.append(rows[-1] + "\n" + m.stderr()[-2000:])
    print("\n".join(rows))
    assert not bad, "\n\n".join(bad)
    during = [r for r in rows if "%d/%d stored" % (N_BIG, N_BIG) not in r]
    assert len(during) >= 5, "too few signals came during a first sync:\n" + "\n".join(rows)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_while_a_read_waits_on_a_stalled_server(small_server, mount, sig):
    """A `cat` of a message not cached waits on a server that stopped
    answering (its fetch would wait the 20 s timeout): the signal still
    ends convoyfs within 2 s, and the cat gets an error, not a hang."""
    proxy = FaultProxy("127.0.0.1", small_server.port)
    cat = None
    try:
        m = mount(small_server, url=proxy.url(), timeout=20)
        inbox = os.path.join(m.path, "INBOX")
        path = os.path.join(inbox, sorted(os.listdir(inbox))[0])
        proxy.stall()
        cat = subprocess.Popen(["cat", path], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
        time.sleep(1.0)
        assert cat.poll() is None, "the read did not wait on the server"
        rc, took = stop_by_signal(m, sig)
        assert rc == 0 and took < STOP_LIMIT, "exit %r after %.2f s:\n%s" % (
            rc, took, m.stderr()[-3000:])
        assert mount_count(m.path) == 0
        assert cat.wait(10) != 0, "cat read a body nobody sent"
        print("exit %s in %.2f s%s; cat: %s" % (
            rc, took, " (left the sync running)" if LEFT in m.stderr() else "",
            cat.stderr.read().decode().strip()))
    finally:
        if cat is not None:
            if cat.poll() is None:
                cat.kill()
            cat.wait(10)
            cat.stderr.close()
        proxy.close()


def test_a_signal_while_the_status_file_is_open(small_server, mount):
    """SIGTERM while a reader holds .convoyfs/status open: the daemon
    unmounts (lazily: the file is still open) and ends with status 0,
    and the snapshot that open made is freed although its RELEASE never
    comes (under the sanitizers a leak fails the test at teardown)."""
    m = mount(small_server)
    f = open(os.path.join(m.path, ".convoyfs", "status"), "rb")
    try:
        assert f.read(9) == b"account: "
        rc, took = stop_by_signal(m, signal.SIGTERM)
    finally:
        with contextlib.suppress(OSError):
            f.close()
    assert rc == 0 and took < STOP_LIMIT, "exit %r after %.2f s:\n%s" % (
        rc, took, m.stderr()[-3000:])
    assert m.sanitizer_reports() == [], m.stderr()[-3000:]


# -- 2. one mount per directory, one convoyfs per store -----------------------------

def test_a_mount_point_is_mounted_once(small_server, mount, tmp_path, convoyfs_bin):
    m = mount(small_server)
    cmd, mark = never_asked(tmp_path, small_server)
    r = refuse(argv_for(convoyfs_bin, small_server, m.path, tmp_path / "cache2",
                        password_command=cmd), m.path, tmp_path)
    r.check(r"already a mount point")
    assert not mark.exists(), "it asked for the password first"
    assert mount_count(m.path) == 1
    assert len(os.listdir(os.path.join(m.path, "INBOX"))) == N_SMALL


def test_a_store_is_held_by_one_convoyfs(small_server, mount, tmp_path, convoyfs_bin):
    m = mount(small_server)
    other = tmp_path / "other"
    other.mkdir()
    cmd, mark = never_asked(tmp_path, small_server)
    r = refuse(argv_for(convoyfs_bin, small_server, other, m.cache_dir, password_command=cmd),
               other, tmp_path)
    r.check(r"cache directory .* is in use by another convoyfs")
    assert os.path.realpath(m.path) in r.lines[0], "the line names the mount holding it"
    assert not mark.exists(), "it asked for the password first"
    assert mount_count(other) == 0 and os.listdir(other) == []
    # the holder goes on; once it is gone the store is free again
    inbox = os.path.join(m.path, "INBOX")
    with open(os.path.join(inbox, sorted(os.listdir(inbox))[0]), "rb") as f:
        assert f.read() in small_server.bodies
    assert m.stop() == 0, m.stderr()[-3000:]
    again = mount(small_server, name="other", cache_dir=m.cache_dir)
    assert len(os.listdir(os.path.join(again.path, "INBOX"))) == N_SMALL


def test_a_mount_point_with_files_needs_nonempty(small_server, mount, tmp_path, convoyfs_bin):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine\n")
    cmd, mark = never_asked(tmp_path, small_server)
    r = refuse(argv_for(convoyfs_bin, small_server, full, tmp_path / "cache",
                        password_command=cmd), full, tmp_path)
    r.check(r"not empty .*-o nonempty")
    assert not mark.exists()
    assert mount_count(full) == 0 and os.listdir(full) == ["keep.txt"]

    m = mount(small_server, name="full", options={"nonempty": None})
    assert len(os.listdir(os.path.join(m.path, "INBOX"))) == N_SMALL
    assert "keep.txt" not in os.listdir(m.path)
    assert m.stop() == 0, m.stderr()[-3000:]
    assert (full / "keep.txt").read_text() == "mine\n"


@pytest.mark.parametrize("what", ["missing", "a file"])
def test_a_mount_point_that_is_no_directory(tmp_path, convoyfs_bin, small_server, what):
    mp = tmp_path / "mp"
    if what == "a file":
        mp.write_text("x")
    cmd, mark = never_asked(tmp_path, small_server)
    r = refuse(argv_for(convoyfs_bin, small_server, mp, tmp_path / "cache", password_command=cmd),
               mp, tmp_path)
    r.check(r"cannot mount on .*: (No such file or directory|not a directory)$")
    assert not mark.exists()


# -- 3. relative paths under the daemon ---------------------------------------------

def _pids_with_arg(arg):
    out = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open("/proc/%s/cmdline" % p, "rb") as f:
                if arg.encode() in f.read().split(b"\0"):
                    out.append(int(p))
    return out


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def test_relative_paths_hold_under_the_daemon(small_server, tmp_path, convoyfs_bin):
    """cafile=ca.pem and cache_dir=cache-N, relative to where convoyfs ran,
    and the mount point too: the daemon works from /, where its fetchers
    still find the CA (a body not cached needs a new connection) and the
    store is made in the directory named, not under /. Its lock holds
    across the fork: a second convoyfs on that store is refused."""
    d = small_server
    cwd = tmp_path / "cwd"
    (cwd / "mnt").mkdir(parents=True)
    shutil.copy(d.ca_file, cwd / "ca.pem")
    name = "convoyfs-test-cache-%d" % os.getpid()
    assert not os.path.exists("/" + name)
    opts = "cafile=ca.pem,cache_dir=%s,password_command=%s,timeout=10" % (
        name, d.password_command())
    mp = str(cwd / "mnt")
    errpath = tmp_path / "daemon.stderr"
    daemons = []
    try:
        with open(errpath, "wb") as err:
            r = subprocess.run([convoyfs_bin, "-o", opts, d.url(), "mnt"], cwd=str(cwd),
                               stdin=subprocess.DEVNULL, stdout=err, stderr=err, timeout=60)
        assert r.returncode == 0, errpath.read_text()
        harness.wait_until(lambda: harness.mounted(mp), 10, what="the daemon's mount")
        daemons = _pids_with_arg(opts)
        assert len(daemons) == 1, daemons
        inbox = os.path.join(mp, "INBOX")
        harness.wait_until(lambda: len(os.listdir(inbox)) == N_SMALL, 60,
                           what="INBOX to list %d messages" % N_SMALL)
        with open(os.path.join(inbox, sorted(os.listdir(inbox))[-1]), "rb") as f:
            assert f.read() in d.bodies
        assert (cwd / name / "cache.db").exists()
        assert not os.path.exists("/" + name), "the store was made under /"

        other = tmp_path / "other"
        other.mkdir()
        rr = refuse(argv_for(convoyfs_bin, d, other, cwd / name), other, tmp_path)
        rr.check(r"is in use by another convoyfs \(mounted on %s\)" % re.escape(
            os.path.realpath(mp)))

        assert harness.fusermount(mp).returncode == 0
        harness.wait_until(lambda: not any(_alive(p) for p in daemons), 10,
                           what="the daemon to exit after the unmount")
    finally:
        if harness.mounted(mp):
            harness.fusermount(mp, lazy=True)
        for p in daemons:
            if _alive(p):
                os.kill(p, signal.SIGTERM)
                with contextlib.suppress(TimeoutError):
                    harness.wait_until(lambda: not _alive(p), 5)
            if _alive(p):
                os.kill(p, signal.SIGKILL)
        if os.path.isdir("/" + name):
            shutil.rmtree("/" + name, ignore_errors=True)
    assert not harness.mounted(mp)
    err = errpath.read_text()
    assert not [l for l in err.splitlines() if any(p.search(l) for p in harness.SANITIZER_PATTERNS)]


def test_sigterm_ends_the_daemon(small_server, tmp_path, convoyfs_bin):
    """The handlers are set before the fork, the threads made after it:
    SIGTERM to the daemon unmounts it too, within 2 s."""
    mp = tmp_path / "mnt"
    mp.mkdir()
    argv = argv_for(convoyfs_bin, small_server, mp, tmp_path / "cache", foreground=False)
    daemons = []
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        harness.wait_until(lambda: harness.mounted(str(mp)), 10, what="the daemon's mount")
        daemons = _pids_with_arg(argv[2])
        assert len(daemons) == 1, daemons
        harness.wait_until(lambda: len(os.listdir(mp / "INBOX")) == N_SMALL, 60,
                           what="INBOX to list %d messages" % N_SMALL)
        t0 = time.monotonic()
        os.kill(daemons[0], signal.SIGTERM)
        harness.wait_until(lambda: not _alive(daemons[0]), 10, interval=0.02,
                           what="the daemon to exit")
        took = time.monotonic() - t0
        assert took < STOP_LIMIT, "the daemon took %.2f s" % took
        assert mount_count(mp) == 0
    finally:
        if mount_count(mp):
            harness.fusermount(str(mp), lazy=True)
        for p in daemons:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


# -- 4. passwords that cannot be sent ------------------------------------------------

def check_password_refused(r, server, before, why):
    r.check(r"password .*contains %s.*: refused$" % why)
    assert server.password not in r.output
    assert logins(server) == before, "it logged in anyway"


@pytest.mark.parametrize("output,why", [
    (b"s3cret-Pw\rjunk\n", "a carriage return"),  # cut at the CR: the right password
    (b"s3cret-Pw\r\n", "a carriage return"),  # a CRLF line end
    (b"s3cret-Pw\0junk\n", "a NUL byte"),
], ids=["CR", "CRLF", "NUL"])
def test_password_command_output_with_cr_or_nul(small_server, tmp_path, convoyfs_bin,
                                                output, why):
    pw = tmp_path / "pw"
    pw.write_bytes(output)
    mp = tmp_path / "mnt"
    mp.mkdir()
    before = logins(small_server)
    r = refuse(argv_for(convoyfs_bin, small_server, mp, tmp_path / "cache",
                        password_command="cat %s" % pw), mp, tmp_path,
               stdin=subprocess.DEVNULL)
    check_password_refused(r, small_server, before, why)
    assert mount_count(mp) == 0


def test_password_command_first_line_only(small_server, mount, tmp_path):
    """What comes after the first line is not the password (pass prints
    more lines), and a last line without LF is a line."""
    for n, output in enumerate([b"s3cret-Pw\nuser: alice\nurl: x\r\n", b"s3cret-Pw"]):
        pw = tmp_path / ("pw%d" % n)
        pw.write_bytes(output)
        m = mount(small_server, name="mnt%d" % n, password_command="cat %s" % pw)
        assert len(os.listdir(os.path.join(m.path, "INBOX"))) == N_SMALL
        assert m.stop() == 0


def netrc_home(tmp_path, content):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    netrc = home / ".netrc"
    netrc.write_bytes(content)
    netrc.chmod(0o600)
    return dict(os.environ, HOME=str(home))


def test_netrc_password_with_nul(small_server, tmp_path, convoyfs_bin):
    env = netrc_home(tmp_path, b"machine 127.0.0.1 login alice password s3cret-Pw\0junk\n")
    mp = tmp_path / "mnt"
    mp.mkdir()
    before = logins(small_server)
    r = refuse(argv_for(convoyfs_bin, small_server, mp, tmp_path / "cache",
                        password_command=NO_COMMAND), mp, tmp_path,
               stdin=subprocess.DEVNULL, env=env)
    check_password_refused(r, small_server, before, "a NUL byte")


def test_netrc_entry_is_found(small_server, tmp_path, convoyfs_bin):
    """~/.netrc read by hand now: the first entry for this host and user."""
    env = netrc_home(tmp_path, b"machine other.example login alice password wrong1\n"
                               b"machine 127.0.0.1\n\tlogin bob password wrong2\n"
                               b"machine 127.0.0.1 login alice\n  password s3cret-Pw\n"
                               b"default login alice password wrong3\n")
    mp = tmp_path / "mnt"
    mp.mkdir()
    p = subprocess.Popen(argv_for(convoyfs_bin, small_server, mp, tmp_path / "cache",
                                  password_command=NO_COMMAND),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=open(tmp_path / "netrc.stderr", "wb"), env=env)
    try:
        harness.wait_until(lambda: p.poll() is not None or harness.mounted(str(mp)), 30,
                           what="the mount")
        assert harness.mounted(str(mp)), (tmp_path / "netrc.stderr").read_text()
        harness.wait_until(lambda: os.path.isdir(mp / "INBOX") and
                           len(os.listdir(mp / "INBOX")) == N_SMALL, 60,
                           what="INBOX to list %d messages" % N_SMALL)
        assert harness.fusermount(str(mp)).returncode == 0
        assert p.wait(30) == 0
    finally:
        if harness.mounted(str(mp)):
            harness.fusermount(str(mp), lazy=True)
        if p.poll() is None:
            p.kill()
        p.wait(10)


@pytest.mark.parametrize("typed,why", [
    (b"s3cret-Pw\x16\rjunk\n", "a carriage return"),  # ^V: the CR taken as it is
    (b"s3cret-Pw\x16\x00junk\n", "a NUL byte"),
], ids=["CR", "NUL"])
def test_typed_password_with_cr_or_nul(small_server, tmp_path, convoyfs_bin, typed, why):
    env = dict(os.environ, HOME=str(tmp_path))  # no ~/.netrc
    mp = tmp_path / "mnt"
    mp.mkdir()
    before = logins(small_server)
    master, slave = pty.openpty()
    errpath = tmp_path / "prompt.out"
    err = open(errpath, "wb")
    p = subprocess.Popen(argv_for(convoyfs_bin, small_server, mp, tmp_path / "cache",
                                  password_command=NO_COMMAND),
                         stdin=slave, stdout=err, stderr=err, env=env)
    try:
        os.close(slave)
        harness.wait_until(lambda: b"Password for" in errpath.read_bytes() or p.poll() is not None,
                           20, what="the prompt")
        time.sleep(0.5)  # the echo is turned off (TCSAFLUSH) after the prompt
        os.write(master, typed)
        t0 = time.monotonic()
        rc = p.wait(20)
        out = errpath.read_bytes().decode("utf-8", "replace")
        r = Refusal(rc, out, time.monotonic() - t0)
        r.lines = [l for l in r.lines if not l.startswith("Password for")]
        check_password_refused(r, small_server, before, why)
        assert mount_count(mp) == 0
    finally:
        if mount_count(mp):
            harness.fusermount(str(mp), lazy=True)
        if p.poll() is None:
            p.kill()
        p.wait(10)
        err.close()
        os.close(master)
