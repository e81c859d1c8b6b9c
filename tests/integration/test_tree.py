"""The mount's tree is the server's folder list; every folder directory
holds one safely named .eml file per message."""

import os

import harness


def test_tree_equals_folder_list(shared_mount, server_state):
    expected = server_state.expected_dirs()
    tree = harness.walk_folders(shared_mount.path, expected)
    got = set(tree) - {""}
    assert got == expected, "missing: %s; unexpected: %s" % (
        sorted(expected - got), sorted(got - expected))


def test_nested_and_non_ascii_folders(shared_mount, server_state):
    root = shared_mount.path
    for rel in ("Lists/dev/patches", "Work/Projects 2024", "Café", "日本語", "Corpus"):
        assert rel in server_state.expected_dirs() or rel == "Corpus"
        if rel == "Corpus" and "Corpus" not in server_state.expected_dirs():
            continue
        assert os.path.isdir(os.path.join(root, rel)), rel
    top = set(os.listdir(os.fsencode(root)))
    assert "Café".encode() in top and "日本語".encode() in top
    assert b"Lists" in top and b"Lists/dev" not in top
    assert "dev" in os.listdir(os.path.join(root, "Lists"))
    st = os.stat(os.path.join(root, "Lists", "dev"))
    assert st.st_mode & 0o777 == 0o700 and (st.st_mode >> 12) == 0o04


def test_each_folder_lists_its_messages(shared_mount, server_state):
    tree = harness.walk_folders(shared_mount.path, server_state.expected_dirs())
    problems = []
    selectable = {server_state.dir_of(f): f for f in server_state.messages}
    for rel, names in tree.items():
        if rel not in selectable:
            if names:
                problems.append("%s is no selectable folder but holds %d files" % (rel, len(names)))
            continue
        want = len(server_state.messages[selectable[rel]])
        if len(names) != want:
            problems.append("%s: %d files, server has %d messages" % (rel, len(names), want))
        for n in names:
            p = harness.name_problems(n)
            if p or not harness.MESSAGE_NAME.match(n):
                problems.append("%s/%r: %s" % (rel, n, p or "not 'YYYY-MM-DD HH.MM subject #id.eml'"))
    assert not problems, "\n".join(problems[:50])


def test_files_are_private_read_only_regular_files(shared_mount, server_state):
    folder = server_state.dir_of("INBOX")
    d = os.path.join(shared_mount.path, folder)
    names = os.listdir(d)
    assert names
    for n in names[:20]:
        st = os.lstat(os.path.join(d, n))
        assert (st.st_mode >> 12) == 0o10, n
        # the content is the server's: read-only (moving and deleting it
        # is up to its folder, which is writable)
        assert st.st_mode & 0o777 == 0o400, (n, oct(st.st_mode))
        assert st.st_uid == os.getuid()
        assert st.st_nlink >= 1
    # the same inode number whenever the same file is looked up
    p = os.path.join(d, names[0])
    assert os.stat(p).st_ino == os.stat(p).st_ino


def test_control_directory_is_hidden_and_readable(shared_mount):
    root = shared_mount.path
    assert harness.CONTROL_DIR in os.listdir(root)
    status = shared_mount.status()
    assert "state: idle" in status
    assert shared_mount.bodies_fetched() is not None, status


def test_lookup_of_missing_names_is_enoent(shared_mount):
    root = shared_mount.path
    for rel in ("no such folder", "INBOX/no such message.eml", ".hidden", "INBOX/.hidden"):
        assert not os.path.exists(os.path.join(root, rel)), rel
