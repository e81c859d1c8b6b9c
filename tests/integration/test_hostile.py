"""Hostile names from the server become safe, unique file names: folders
called '..', '.', '.convoyfs', with '/', control characters or 230 and 270
bytes of UTF-8; subjects of 600 bytes (names of at most 200 bytes), with control characters, '/', ':', invalid
UTF-8 in an encoded word, or raw 8-bit bytes."""

import collections
import datetime as dt
import os
import re
import shutil

import pytest

import harness

WHEN = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)

# Folder names Dovecot takes with maildir LAYOUT=fs and separator '/'.
FS_FOLDERS = [".hidden", "..hidden", "a..b", "dot.", " lead", "trail ", "#hash", "semi;colon",
              "colon:name", "back\\slash", 'quo"te', "per%cent", "st*ar", "del\x7fname",
              "L" * 200, "日" * 90, "amp & more", "&Jjo-", "emoji 😀", "-dash", ".convoyfs",
              "Ünï/cödé", "L" * 230]
# Directories made in the maildir behind Dovecot's back: it lists them with
# control characters encoded (ctl&AAE-name), as \Noselect folders.
FS_DISK_DIRS = [b"ctl\x01name", b"tab\tname", b"nl\nname", b"esc\x1b[31mred"]
# With LAYOUT=index and separator '^' even these are valid names.
INDEX_FOLDERS = ["..", ".", "...", "/abs", "a/b", "a_b", "a-b", "x/../y", "trail/", "a//b",
                 "x/./y", "Parent^..", "Parent^.", "Parent^a/b", "Parent^child", "..^..",
                 ".convoyfs"]
# Safe names that a sanitised name (of "a/b") may compete for.
CONTESTED = {"a_b", "a-b"}


def marker(i):
    return "folder marker %03d" % i


def msg(subject_line, extra=b"", body=b"body\r\n", mid=None):
    mid = mid or ("<%s@hostile.test>" % os.urandom(6).hex()).encode()
    head = b"From: Hostile <h@hostile.test>\r\nDate: Mon, 6 May 2024 07:08:09 +0000\r\n"
    head += b"Message-ID: " + mid + b"\r\n"
    if subject_line is not None:
        head += b"Subject: " + subject_line + b"\r\n"
    return head + extra + b"\r\n" + body


def b64word(text):
    import base64
    return b"=?UTF-8?B?" + base64.b64encode(text.encode()) + b"?="


SUBJECTS = {
    "long-ascii": b"Long " + b"abcdefghij " * 55,
    "long-utf8": b"\r\n ".join(b64word(w) for w in ["é" * 20, "日本語" * 8, "😀" * 10,
                                                     "Ωμέγα" * 6] * 3),
    "long-emoji": b64word("😀" * 150),
    "slash-colon": b"a/b: c // d::e",
    "raw-control": b"ctl\x01char\x7fend\ttab",
    "encoded-control": b"=?utf-8?q?line1=0Aline2=0Dx=00nul?=",
    "invalid-utf8-word": b"=?utf-8?B?//4=?= after",
    "raw-latin1": b"caf\xe9 cr\xe8me",
    "raw-nul": b"nul\x00byte",
    "dotdot": b"..",
    "dot": b".",
    "empty": b"",
    "none": None,
    "slashes": b"////",
    "unknown-charset": b"=?x-unknown?q?abc?= tail",
    "only-controls": b"\x01\x02\x03 \x7f",
    "fake-suffix": b"fake #1.eml",
    "same-1": b"Same subject",
    "same-2": b"Same subject",
    "leading-dash": b"-rf --no-preserve-root",
}


def load_fs_server(d):
    with d.session() as c:
        for i, name in enumerate(FS_FOLDERS):
            d.create(name, imap=c)
            d.append(name, msg(marker(i).encode()), WHEN, imap=c)
        items = [(msg(s, b"X-Case: %s\r\n" % case.encode()), WHEN, ()) for case, s in SUBJECTS.items()]
        d.append_many("Hostile", items, imap=c)
    md = os.path.join(d.home_root, d.user, "Maildir")
    st = os.stat(md)
    for raw in FS_DISK_DIRS:
        p = os.path.join(os.fsencode(md), raw)
        for sub in (b"", b"/cur", b"/new", b"/tmp"):
            os.makedirs(p + sub, exist_ok=True)
            os.chown(p + sub, st.st_uid, st.st_gid)


def load_index_server(d):
    with d.session() as c:
        for i, name in enumerate(INDEX_FOLDERS):
            d.create(name, imap=c)
            d.append(name, msg(marker(i).encode()), WHEN, imap=c)


@pytest.fixture(scope="module")
def fs_server():
    d = harness.Dovecot()
    try:
        d.start()
        load_fs_server(d)
        yield d
    finally:
        d.cleanup()


@pytest.fixture(scope="module")
def index_server():
    d = harness.Dovecot(layout="index", separator="^")
    try:
        d.start()
        load_index_server(d)
        yield d
    finally:
        d.cleanup()


def all_entries(root):
    """[(relative dir, name, is_dir)] of everything in the folder part (the
    servers here have no folder called Conversations)."""
    out = []
    skip = {harness.CONTROL_DIR.encode(), harness.CONVERSATIONS.encode()}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        rel = os.path.relpath(dirpath, os.fsencode(root))
        rel = b"" if rel == b"." else rel
        if rel == b"":
            dirnames[:] = [x for x in dirnames if x not in skip]
        for n in dirnames:
            out.append((rel, n, True))
        for n in filenames:
            out.append((rel, n, False))
    return out


def check_safe(root):
    problems = []
    for rel, n, is_dir in all_entries(root):
        name = os.fsdecode(n)
        p = harness.name_problems(name)
        if not is_dir and not p and not harness.MESSAGE_NAME.match(n.decode()):
            p = ["not 'YYYY-MM-DD HH.MM subject #id.eml'"]
        if p:
            problems.append("%r/%r: %s" % (rel, n, "; ".join(p)))
    return problems


def find_markers(root, count):
    """{marker index: [relative dir paths holding a file with that marker]}"""
    found = collections.defaultdict(list)
    for rel, n, is_dir in all_entries(root):
        if is_dir:
            continue
        m = re.search(rb"folder marker (\d{3})", n)
        if m:
            found[int(m.group(1))].append(rel.decode("utf-8", "replace"))
    return found


def folder_dirs(state_folders, delim):
    """Every folder path (with its parents) as a tuple of components."""
    out = set()
    for name, *_ in state_folders:
        parts = name.split(delim) if delim else [name]
        for i in range(1, len(parts) + 1):
            out.add(tuple(parts[:i]))
    return out


def plain_safe(component):
    return (component not in ("", ".", "..") and not component.startswith(".")
            and "/" not in component and len(component.encode()) <= 200
            and not any(ord(c) < 0x20 or ord(c) == 0x7f for c in component))


@pytest.mark.parametrize("layout", ["fs", "index"])
def test_hostile_folder_names(layout, fs_server, index_server, mount):
    d = fs_server if layout == "fs" else index_server
    names = FS_FOLDERS if layout == "fs" else INDEX_FOLDERS
    m = mount(d)
    folders = d.list_folders()
    delim = next(f[2] for f in folders if f[2])
    problems = check_safe(m.path)
    assert not problems, "\n".join(problems)
    # the control directory still works, whatever the server calls its folders
    assert "state: idle" in m.status()
    # one directory per folder path, however its name had to change
    dirs = [(rel, n) for rel, n, is_dir in all_entries(m.path) if is_dir]
    want = folder_dirs(folders, delim)
    assert len(dirs) == len(want), "%d directories for %d folder paths:\n%s" % (
        len(dirs), len(want), sorted(dirs))
    found = find_markers(m.path, len(names))
    for i, name in enumerate(names):
        where = found.get(i, [])
        assert len(where) == 1, "folder %r: its message is in %r" % (name, where)
        parts = name.split(delim)
        got = where[0].split("/")
        assert len(got) == len(parts), "folder %r shows as %r" % (name, where[0])
        for want_c, got_c in zip(parts, got):
            if plain_safe(want_c) and name not in CONTESTED:
                assert got_c == want_c, "folder %r shows as %r" % (name, where[0])
        f = os.path.join(m.path, where[0])
        eml = [x for x in os.listdir(f) if marker(i) in x]
        raw = os.getxattr(os.path.join(f, eml[0]), "user.convoyfs.folder").decode()
        assert raw == harness.mutf7_encode(name)
    assert len({w[0] for w in found.values()}) == len(names)


def test_hostile_subjects(fs_server, mount):
    m = mount(fs_server)
    d = os.path.join(m.path, "Hostile")
    server = fs_server.fetch_folder("Hostile")
    names = os.listdir(os.fsencode(d))
    assert len(names) == len(server) == len(SUBJECTS)
    problems = check_safe(d)
    assert not problems, "\n".join(problems)
    by_case = {}
    contents = []
    for n in names:
        with open(os.path.join(os.fsencode(d), n), "rb") as f:
            data = f.read()
        contents.append(data)
        case = re.search(rb"X-Case: (\S+)", data).group(1).decode()
        by_case[case] = n.decode("utf-8")
    assert sorted(contents) == sorted(x["body"] for x in server.values())
    assert len(by_case) == len(SUBJECTS)

    def subj(case):
        return harness.MESSAGE_NAME.match(by_case[case]).group(6)

    # 600 bytes of subject: cut on a character boundary (a 4-byte one and
    # the space before it at most) to fit 200, date first, " #<id>.eml" whole
    for case in ("long-ascii", "long-utf8", "long-emoji"):
        n = by_case[case].encode()
        full = harness.expected_subject(SUBJECTS[case].replace(b"\r\n", b"").decode())
        assert len(full.encode()) >= 600, (case, len(full.encode()))
        assert 195 <= len(n) <= 200, (case, len(n))
        assert full.startswith(subj(case)), case
        assert n.startswith(b"2024-05-06 07.08 ") and re.search(rb" #\d+\.eml$", n), n
    assert subj("long-ascii").startswith("Long abcdefghij abcdefghij")
    assert subj("long-utf8").startswith("é" * 20)
    assert subj("long-emoji").startswith("😀" * 10)
    assert "a-b- c -- d--e" in subj("slash-colon")
    assert re.fullmatch(r"ctl char end tab", subj("raw-control")), subj("raw-control")
    assert subj("encoded-control").startswith("line1 line2 x"), subj("encoded-control")
    assert subj("invalid-utf8-word").endswith("after")
    assert subj("raw-latin1").startswith("caf")
    assert subj("unknown-charset").endswith("tail")
    assert subj("fake-suffix").startswith("fake #1.eml")
    assert subj("same-1") == subj("same-2") == "Same subject"
    assert by_case["same-1"] != by_case["same-2"]
    assert subj("leading-dash").startswith("-rf --no-preserve-root")
    for case in ("dotdot", "dot", "empty", "none", "slashes", "only-controls"):
        assert harness.MESSAGE_NAME.match(by_case[case]), by_case[case]
    # each name opens the message it names, also with tools that take names literally
    for case, n in by_case.items():
        p = os.path.join(d, n)
        assert os.path.isfile(p), case
    # a conversation's name is its first message's, cut the same way
    convs = os.listdir(os.path.join(m.path, harness.CONVERSATIONS))
    assert convs
    for c in convs:
        assert not harness.name_problems(c), (c, harness.name_problems(c))
        assert harness.MESSAGE_NAME.match(c + ".eml"), c
    longest = max(len(c.encode()) for c in convs)
    assert 195 <= longest <= 200, longest
    dst = os.path.join(os.path.dirname(m.path), "copy")
    shutil.copytree(d, dst)
    assert sorted(os.listdir(dst)) == sorted(by_case.values())


def test_safe_folder_name_is_kept_when_another_is_sanitised_onto_it(index_server, mount):
    # "a/b" cannot keep its name; "a_b" and "a-b" can and should, whichever
    # way the server happens to order its LIST answer
    m = mount(index_server)
    found = find_markers(m.path, len(INDEX_FOLDERS))
    for name in sorted(CONTESTED):
        where = found.get(INDEX_FOLDERS.index(name), [])
        assert where == [name], "folder %r shows as %r" % (name, where)
