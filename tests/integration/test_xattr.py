"""Each message file tells which server message it is: its xattrs, size,
mtime, name and content all agree with that message on the server."""

import os

import harness

XATTRS = ["user.convoyfs.flags", "user.convoyfs.message-id", "user.convoyfs.uid",
          "user.convoyfs.folder"]


def getx(path, name):
    try:
        return os.getxattr(path, name).decode("utf-8")
    except OSError:
        return None


def test_xattrs_match_the_server(shared_mount, server_state):
    by_dir = {server_state.dir_of(f): f for f in server_state.messages}
    tree = harness.walk_folders(shared_mount.path, server_state.expected_dirs())
    problems = []
    checked = 0
    subjects_checked = 0
    for rel, names in tree.items():
        folder = by_dir.get(rel)
        if folder is None:
            continue
        msgs = server_state.messages[folder]
        uids = []
        for n in names:
            p = os.path.join(shared_mount.path, rel, n)
            listed = set(os.listxattr(p))
            if not set(XATTRS) - {"user.convoyfs.message-id"} <= listed:
                problems.append("%s: listxattr gives %s" % (p, sorted(listed)))
                continue
            uid = int(getx(p, "user.convoyfs.uid"))
            uids.append(uid)
            info = msgs.get(uid)
            if info is None:
                problems.append("%s: uid %d is not in %s" % (p, uid, folder))
                continue
            if getx(p, "user.convoyfs.folder") != server_state.raw[folder]:
                problems.append("%s: folder %r, server name %r" % (
                    p, getx(p, "user.convoyfs.folder"), server_state.raw[folder]))
            flags = set((getx(p, "user.convoyfs.flags") or "").split())
            if flags != info["flags"]:
                problems.append("%s: flags %s, server %s" % (p, flags, info["flags"]))
            mid = getx(p, "user.convoyfs.message-id")
            if (mid or "") != harness.message_id_token(info["message_id"]):
                problems.append("%s: message-id %r, server %r" % (p, mid, info["message_id"]))
            st = os.stat(p)
            if st.st_size != info["size"]:
                problems.append("%s: st_size %d, RFC822.SIZE %d" % (p, st.st_size, info["size"]))
            if int(st.st_mtime) != int(info["internaldate"]):
                problems.append("%s: mtime %d, INTERNALDATE %d" % (
                    p, st.st_mtime, info["internaldate"]))
            with open(p, "rb") as f:
                if f.read() != info["body"]:
                    problems.append("%s: content is not BODY[] of uid %d" % (p, uid))
            subj = harness.subject_header(info["body"])
            want = harness.expected_subject(subj) if subj is not None else None
            if (want and want.isascii() and len(want) < 120 and "=?" not in subj
                    and folder != "Corpus/imaptest"):
                subjects_checked += 1
                if want not in n:
                    problems.append("%r: subject %r is not in the name" % (n, want))
            checked += 1
        if sorted(uids) != sorted(msgs):
            problems.append("%s: uids %s..., server %s..." % (folder, sorted(uids)[:5],
                                                               sorted(msgs)[:5]))
    assert not problems, "\n".join(problems[:40])
    assert checked == server_state.total()
    assert subjects_checked > 200


def test_xattrs_of_directories_and_missing_names(shared_mount):
    p = os.path.join(shared_mount.path, "INBOX")
    names = os.listdir(p)
    f = os.path.join(p, names[0])
    try:
        os.getxattr(f, "user.convoyfs.no-such-attribute")
        raise AssertionError("an unknown xattr was answered")
    except OSError as e:
        assert e.errno in (61, 95), e  # ENODATA (or ENOTSUP)
    # a buffer too small is ERANGE, not a truncated value
    import ctypes
    import ctypes.util
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    buf = ctypes.create_string_buffer(1)
    n = libc.getxattr(f.encode(), b"user.convoyfs.folder", buf, ctypes.c_size_t(1))
    assert n == -1 and ctypes.get_errno() == 34  # ERANGE
    n = libc.getxattr(f.encode(), b"user.convoyfs.folder", None, ctypes.c_size_t(0))
    assert n == len(b"INBOX")


def test_flag_sets_are_kept_whole(dovecot_factory, mount):
    """70 keywords, one of 150 bytes, and two spellings of one keyword:
    every flag whole, each keyword once (they compare without case)."""
    d = dovecot_factory(extra_conf="mail_max_keyword_length = 200")
    [(msg, when)] = harness.genmail.gen_messages(1, 31)
    d.append("INBOX", msg, date=when)
    many = ["$kw%02d" % i for i in range(70)] + ["$" + "L" * 149, "\\Flagged"]
    with d.session() as c:
        c.select("INBOX")
        for i in range(0, len(many), 20):
            typ, data = c.uid("STORE", "1", "+FLAGS.SILENT", "(%s)" % " ".join(many[i:i + 20]))
            assert typ == "OK", data
        typ, data = c.uid("STORE", "1", "+FLAGS.SILENT", "($KW05)")
        assert typ == "OK", data
    server = d.flags_of("INBOX")[1]
    m = mount(d)
    (name,) = os.listdir(os.path.join(m.path, "INBOX"))
    shown = getx(os.path.join(m.path, "INBOX", name), "user.convoyfs.flags").split()
    assert len(shown) == len(set(f.lower() for f in server)) == 72
    assert {f.lower() for f in shown} == {f.lower() for f in server}
    assert "$" + "L" * 149 in shown
