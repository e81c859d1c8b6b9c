"""A second mount with the same cache directory starts from the store: it
lists the same files under the same names without downloading the
mailbox's metadata again, and serves bodies read before from the cache."""

import os

import harness


def test_remount_starts_from_the_store(dovecot, server_state, mount):
    total = server_state.total()
    mark = dovecot.rawlog_mark()
    a = mount(dovecot, name="first")
    first = len(harness.META_RESPONSE.findall(dovecot.rawlog_text(mark, "out")))
    # the first sync fetched every message's metadata (proves the counting works)
    assert first >= total, "first sync: %d metadata FETCH responses for %d messages" % (
        first, total)
    tree_a = harness.walk_folders(a.path, server_state.expected_dirs())
    inodes_a = {(rel, n): os.stat(os.path.join(a.path, rel, n)).st_ino
                for rel, names in tree_a.items() for n in names}
    assert a.stop() == 0, a.stderr()[-3000:]

    mark = dovecot.rawlog_mark()
    b = mount(dovecot, name="second", cache_dir=a.cache_dir)
    out = dovecot.rawlog_text(mark, "out")
    again = len(harness.META_RESPONSE.findall(out))
    folders = len(server_state.messages)
    assert again <= max(2 * folders, total // 20), (
        "the remount fetched metadata of %d messages again (mailbox: %d)" % (again, total))
    assert dovecot.rawlog_sessions(mark), "the remount did not talk to the server at all"
    tree_b = harness.walk_folders(b.path, server_state.expected_dirs())
    assert tree_b == tree_a, "file names changed across the remount"
    inodes_b = {(rel, n): os.stat(os.path.join(b.path, rel, n)).st_ino
                for rel, names in tree_b.items() for n in names}
    assert inodes_b == inodes_a, "inode numbers changed across the remount"


def test_remount_reads_bodies_from_the_cache(dovecot, server_state, mount):
    a = mount(dovecot, name="first")
    folder = "Lists/dev"
    d = server_state.dir_of(folder)
    names = sorted(os.listdir(os.path.join(a.path, d)))[:6]
    assert len(names) == 6
    bodies = {}
    for n in names:
        with open(os.path.join(a.path, d, n), "rb") as f:
            bodies[n] = f.read()
    assert a.bodies_fetched() >= len(names)
    assert a.stop() == 0, a.stderr()[-3000:]

    b = mount(dovecot, name="second", cache_dir=a.cache_dir)
    before = b.bodies_fetched()
    mark = dovecot.rawlog_mark()
    for n in names:
        with open(os.path.join(b.path, d, n), "rb") as f:
            assert f.read() == bodies[n], n
    assert b.bodies_fetched() == before, "cached bodies were fetched again"
    assert harness.commands(dovecot.rawlog_text(mark), harness.BODY_FETCH) == []
    want = sorted(m["body"] for m in server_state.messages[folder].values())
    assert all(x in want for x in bodies.values())
