"""pytest fixtures: private Dovecot servers and convoyfs mounts.

dovecot        session: one server loaded with the sample mailbox (generated
               messages in nested and non-ASCII folders, plus ../shared/corpora);
               tests must not change it.
server_state   session: what that server holds, fetched once with PEEK.
corpus         session: skips the test when ../shared/corpora is absent.
dovecot_factory  function: extra servers (other certificates, layouts,
               imap_capability), all stopped by pid at teardown.
fresh_dovecot  function: one empty server of the test's own.
mount          function: factory that runs `convoyfs -f` and unmounts at teardown.
shared_mount   one mount of `dovecot` (made once per session) for tests that
               only read.
live_server    function, parametrized over servers.KINDS: an empty, started
               server of each kind ("dovecot", "dovecot-reduced", "cyrus",
               "imap4d"; servers.py), with a `kind`, stopped by pid at teardown.

Every mount's stderr is scanned for sanitizer reports at teardown, and a
normal unmount must end the daemon with exit status 0.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import servers  # noqa: E402


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _failed(request):
    for when in ("setup", "call"):
        rep = getattr(request.node, "rep_" + when, None)
        if rep is not None and rep.failed:
            return True
    return False


@pytest.fixture(scope="session")
def convoyfs_bin():
    path = harness.convoyfs_binary()
    if not os.access(path, os.X_OK):
        if os.environ.get("CONVOYFS"):
            pytest.fail("CONVOYFS=%s is not an executable" % path)
        pytest.skip("%s is not built (run meson setup build && ninja -C build, "
                    "or set CONVOYFS)" % path)
    return path


@pytest.fixture(scope="session")
def dovecot():
    """The shared server with the sample mailbox (at least 500 messages)."""
    d = harness.Dovecot()
    try:
        d.start()
        d.loaded = harness.load_sample_mailbox(d)
        assert not d.loaded["refused"], d.loaded["refused"][:5]
        yield d
    finally:
        if os.environ.get("CONVOYFS_KEEP"):
            d.stop()
            print("kept %s" % d.dir)
        else:
            d.cleanup()


@pytest.fixture(scope="session")
def corpus(dovecot):
    if dovecot.loaded["corpus"] is None:
        pytest.skip("corpora not found at %s (it sits beside the repository as "
                    "../shared/corpora)" % harness.CORPORA)
    return dovecot.loaded["corpus"]


class ServerState:
    """Snapshot of a server: folders from LIST and every message (with body)."""

    def __init__(self, dovecot):
        with dovecot.session() as c:
            self.folders = dovecot.list_folders(c)
            self.delimiter = next((f[2] for f in self.folders if f[2]), None)
            self.messages = {}  # display name -> {uid: info}
            self.raw = {}  # display name -> raw name
            for name, raw, _delim, flags in self.folders:
                self.raw[name] = raw
                if "\\Noselect" in flags or "\\NonExistent" in flags:
                    continue
                self.messages[name] = dovecot.fetch_folder(raw, imap=c, raw_name=True)

    def dir_of(self, name):
        """Relative directory path of a folder in the mount."""
        return name.replace(self.delimiter, "/") if self.delimiter else name

    def expected_dirs(self):
        out = set()
        for name, *_ in self.folders:
            parts = name.split(self.delimiter) if self.delimiter else [name]
            for i in range(1, len(parts) + 1):
                out.add("/".join(parts[:i]))
        return out

    def total(self):
        return sum(len(m) for m in self.messages.values())


@pytest.fixture(scope="session")
def server_state(dovecot):
    return ServerState(dovecot)


@pytest.fixture
def dovecot_factory():
    """Start extra servers: dovecot_factory(**Dovecot kwargs) -> started Dovecot."""
    made = []

    def make(start=True, **kw):
        d = harness.Dovecot(**kw)
        made.append(d)
        return d.start() if start else d

    yield make
    for d in made:
        d.cleanup()


@pytest.fixture
def fresh_dovecot(dovecot_factory):
    """An empty server of this test's own, to fill or tamper with."""
    return dovecot_factory()


def _finish_mount(m, failed):
    """Unmount, then report what went wrong: a non-zero exit after a normal
    unmount, the watchdog, or a sanitizer report."""
    stopped_by_test = m.proc is None
    rc = m.stop()
    problems = []
    if m.killed_by_watchdog:
        problems.append("convoyfs was killed by the watchdog (a hang?)")
    if not stopped_by_test and not failed and rc != 0:
        problems.append("convoyfs exited with %r after fusermount3 -u" % (rc,))
    reports = m.sanitizer_reports()
    if reports:
        problems.append("sanitizer reports:\n" + "\n".join(reports[:40]))
    if problems:
        pytest.fail("\n".join(problems) + "\n--- convoyfs stderr (tail):\n" + m.stderr()[-6000:],
                    pytrace=False)


@pytest.fixture
def mount(request, tmp_path, convoyfs_bin):
    """mount(dovecot, name="mnt", cache_dir=None, wait_idle=True, **Mount kwargs)
    -> a started harness.Mount (by default its first sync has finished)."""
    mounts = []

    def make(dv, name="mnt", cache_dir=None, wait_idle=True, idle_timeout=180, **kw):
        cache = cache_dir or str(tmp_path / (name + "-cache"))
        m = harness.Mount(dv, str(tmp_path / name), cache, binary=convoyfs_bin, **kw)
        mounts.append(m)
        m.start()
        if wait_idle:
            m.wait_idle(idle_timeout)
        return m

    yield make
    failed = _failed(request)
    errors = []
    for m in mounts:
        try:
            _finish_mount(m, failed)
        except pytest.fail.Exception as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


@pytest.fixture(scope="session")
def _shared_mount(tmp_path_factory, dovecot, convoyfs_bin):
    base = tmp_path_factory.mktemp("shared")
    m = harness.Mount(dovecot, str(base / "mnt"), str(base / "cache"), binary=convoyfs_bin)
    try:
        m.start(watchdog=300)
        m.wait_idle(180)
    except BaseException:
        m.stop()
        raise
    m.disarm()
    yield m
    _finish_mount(m, False)


@pytest.fixture
def shared_mount(_shared_mount):
    """One mount of the shared server for tests that only read, first sync
    done; each test gets 300 s before the watchdog kills the daemon."""
    m = _shared_mount
    if m.proc is None or m.proc.poll() is not None:
        pytest.fail("the shared convoyfs mount is gone:\n" + m.stderr()[-4000:], pytrace=False)
    m.arm(300)
    yield m
    m.disarm()


@pytest.fixture(params=servers.KINDS)
def live_server(request):
    """An empty server of each kind, started, with the second-client helpers
    of servers.SecondClient; stopped by its pid at teardown. Skips only when
    the server's programs are absent (tools/install-deps installs them)."""
    kind = request.param
    why = servers.missing(kind)
    if why:
        pytest.skip("%s: %s" % (kind, why))
    s = servers.make(kind)
    try:
        s.start()
        yield s
    finally:
        if os.environ.get("CONVOYFS_KEEP"):
            s.stop()
            print("kept %s" % s.dir)
        else:
            s.cleanup()
