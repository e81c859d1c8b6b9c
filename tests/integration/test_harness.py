"""The harness itself, against a real Dovecot, without convoyfs: the CA,
the rawlog, the sample mailbox and the generator are what the other tests
trust, so each is checked here on its own."""

import imaplib
import os
import ssl
import subprocess
import sys

import pytest

import harness

GEN = os.path.join(harness.REPO, "tools", "gen-mailbox")


def test_tls_verifies_with_the_test_ca_only(dovecot):
    with dovecot.session() as c:
        assert c.state == "AUTH"
    other = dovecot.other_ca()
    ctx = ssl.create_default_context(cafile=other.cert)
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL("127.0.0.1", dovecot.port, ssl_context=ctx, timeout=10)
    # The certificate names localhost and 127.0.0.1, nothing else.
    c = imaplib.IMAP4_SSL("localhost", dovecot.port, ssl_context=dovecot.ssl_context(), timeout=10)
    c.logout()


def test_wrong_name_certificate_fails_host_check(dovecot_factory):
    d = dovecot_factory(server_names=("wrong.example",))
    with pytest.raises(ssl.SSLCertVerificationError, match="match|mismatch"):
        imaplib.IMAP4_SSL("127.0.0.1", d.port, ssl_context=d.ssl_context(), timeout=10)


def test_starttls_port_and_wrong_password(dovecot):
    c = imaplib.IMAP4("127.0.0.1", dovecot.plain_port, timeout=10)
    assert "STARTTLS" in c.capabilities
    c.starttls(ssl_context=dovecot.ssl_context())
    c.login(dovecot.user, dovecot.password)
    c.logout()
    c = imaplib.IMAP4_SSL("127.0.0.1", dovecot.port, ssl_context=dovecot.ssl_context(), timeout=10)
    with pytest.raises(imaplib.IMAP4.error):
        c.login(dovecot.user, "not-the-password")
    c.shutdown()


def test_password_command_prints_the_password(dovecot):
    out = subprocess.run(["/bin/sh", "-c", dovecot.password_command()], capture_output=True,
                         text=True, check=True).stdout
    assert out.splitlines()[0] == dovecot.password
    assert os.stat(dovecot.password_file).st_mode & 0o777 == 0o600


def test_sample_mailbox(dovecot, server_state):
    assert server_state.delimiter == "/"
    names = {f[0] for f in server_state.folders}
    assert {"INBOX", "Lists/dev", "Lists/dev/patches", "Café", "日本語"} <= names
    raws = {f[1] for f in server_state.folders}
    assert {"Caf&AOk-", "&ZeVnLIqe-"} <= raws
    assert server_state.total() >= 500
    for folder, msgs in server_state.messages.items():
        for uid, m in msgs.items():
            assert m["size"] == len(m["body"]), (folder, uid)
    for folder in harness.GENERATED_FOLDERS:
        msgs = server_state.messages[folder]
        seen = sum("\\Seen" in m["flags"] for m in msgs.values())
        assert len(msgs) >= 20 and 0 < seen < len(msgs), (folder, len(msgs), seen)


def test_corpus_loaded(dovecot, server_state, corpus):
    assert corpus >= 500
    for f in ("Corpus/gluon", "Corpus/dovecot-list", "Corpus/imaptest", "Corpus/notmuch"):
        assert server_state.messages.get(f), f
    assert len(server_state.messages["Corpus/dovecot-list"]) == 100
    big = max(m["size"] for m in server_state.messages["Corpus/gluon"].values())
    assert big > 2_000_000  # large_message.eml


def test_rawlog_tells_peek_from_seen_setting_fetches(dovecot_factory):
    d = dovecot_factory()
    uid = d.append("INBOX", b"Subject: t\r\nMessage-ID: <t@x>\r\n\r\nbody\r\n")
    c = imaplib.IMAP4_SSL("127.0.0.1", d.port, ssl_context=d.ssl_context(), timeout=10)
    c.login(d.user, d.password)  # no ID: counts as a client session
    mark = d.rawlog_mark()
    c.select("INBOX", readonly=True)
    c.uid("FETCH", str(uid), "(UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    text = d.rawlog_text(mark)
    assert "SELECT" in text or "EXAMINE" in text
    assert harness.commands(text, harness.BODY_FETCH) == []
    c.uid("FETCH", str(uid), "(BODY.PEEK[])")
    text = d.rawlog_text(mark)
    assert len(harness.commands(text, harness.BODY_FETCH)) == 1
    assert harness.commands(text, harness.SEEN_FETCH) == []
    c.uid("FETCH", str(uid), "(RFC822)")
    text = d.rawlog_text(mark)
    assert len(harness.commands(text, harness.SEEN_FETCH)) == 1
    assert len(harness.META_RESPONSE.findall(d.rawlog_text(mark, "out"))) == 1
    c.logout()
    # the harness's own sessions are left out unless asked for
    assert d.flags_of("INBOX") == {uid: set()}
    assert all(harness.HARNESS_ID not in s[1] for s in d.rawlog_sessions())
    assert any(harness.HARNESS_ID in s[1] for s in d.rawlog_sessions(include_harness=True))


def test_doveadm_reaches_the_private_instance(dovecot):
    out = dovecot.doveadm("mailbox", "status", "-u", dovecot.user, "messages", "INBOX")
    assert "messages=" in out


def test_stop_by_pid_leaves_nothing(tmp_path):
    d = harness.Dovecot()
    try:
        d.start()
        pid = d.master_pid()
        assert pid and os.path.exists("/proc/%d" % pid)
        d.stop()
        assert not os.path.exists("/proc/%d" % pid)
        with pytest.raises(OSError):
            harness.socket.create_connection(("127.0.0.1", d.port), timeout=1)
    finally:
        d.cleanup()


@pytest.mark.parametrize("name", ["INBOX", "Café", "日本語", "a&b", "😀 x", "Ünïcödé/sub", "~tilde"])
def test_mutf7_round_trip(name):
    raw = harness.mutf7_encode(name)
    assert raw.isascii()
    assert harness.mutf7_decode(raw) == name


def test_mutf7_known_values():
    assert harness.mutf7_encode("Café") == "Caf&AOk-"
    assert harness.mutf7_encode("日本語") == "&ZeVnLIqe-"
    assert harness.mutf7_encode("a&b") == "a&-b"
    assert harness.mutf7_decode("&2D3eAA-") == "😀"


def test_generator_is_deterministic_and_varied():
    a = list(harness.genmail.gen_messages(200, 5))
    b = list(harness.genmail.gen_messages(200, 5))
    assert a == b
    assert a != list(harness.genmail.gen_messages(200, 6))
    blobs = [m for m, _ in a]
    assert all(b"\r\n\r\n" in m and b"\n" not in m.replace(b"\r\n", b"") for m in blobs)
    ids = [m.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0] for m in blobs]
    assert len(set(ids)) == len(ids)
    assert sum(b"In-Reply-To:" in m for m in blobs) > 30
    assert sum(b"=?UTF-8?B?" in m.split(b"\r\n\r\n")[0] or b"=?utf-8?q?" in m for m in blobs) > 10
    assert sum(b"multipart/" in m for m in blobs) > 10
    dates = [w for _, w in a]
    assert (max(dates) - min(dates)).days > 600
    # a reply dated before its parent exists
    by_id = {i: w for i, (_, w) in zip(ids, a)}
    early = 0
    for m, w in a:
        if b"In-Reply-To: " in m:
            parent = m.split(b"In-Reply-To: ", 1)[1].split(b"\r\n", 1)[0]
            if parent in by_id and w < by_id[parent]:
                early += 1
    assert early > 0
    # a word from the list is in some messages and not in others
    for w in harness.genmail.WORDS[:20]:
        n = sum(w.encode() in m for m in blobs)
        assert 0 < n < len(blobs)
    for w in harness.genmail.ABSENT_WORDS:
        assert not any(w.encode() in m for m in blobs)


def test_generator_cli_writes_eml_and_mbox(tmp_path):
    subprocess.run([sys.executable, GEN, "-n", "30", "--seed", "9", "--out", str(tmp_path / "d")],
                   check=True)
    files = sorted(os.listdir(tmp_path / "d"))
    assert len(files) == 30 and all(f.endswith(".eml") for f in files)
    first = list(harness.genmail.gen_messages(30, 9))
    assert (tmp_path / "d" / files[0]).read_bytes() == first[0][0]
    subprocess.run([sys.executable, GEN, "-n", "30", "--seed", "9", "--mbox",
                    str(tmp_path / "m.mbox")], check=True)
    msgs = harness.split_mbox((tmp_path / "m.mbox").read_bytes())
    assert len(msgs) == 30
    assert msgs[3][0].replace(b"\n", b"\r\n") == first[3][0]


def test_generator_imap_loader(dovecot_factory, tmp_path):
    d = dovecot_factory()
    subprocess.run([sys.executable, GEN, "-n", "120", "--seed", "4", "--imap", d.url(),
                    "--cafile", d.ca_file, "--password-file", d.password_file,
                    "--folder", "Bench/Ünï"], check=True, capture_output=True, timeout=120)
    msgs = d.fetch_folder("Bench/Ünï")
    assert len(msgs) == 120
    gen = list(harness.genmail.gen_messages(120, 4))
    assert sorted(m["body"] for m in msgs.values()) == sorted(g for g, _ in gen)
    dates = sorted(m["internaldate"] for m in msgs.values())
    assert dates == sorted(int(w.timestamp()) for _, w in gen)


def test_capability_override_and_appends_without_literal_plus(dovecot_factory):
    d = dovecot_factory(imap_capability="IMAP4rev1 IDLE")
    with d.session() as c:
        typ, data = c.capability()
        caps = data[0].decode().split()
        assert "MOVE" not in caps and "CONDSTORE" not in caps and "LITERAL+" not in caps
        assert "LITERAL+" not in c.capabilities
        items = [(m, w, ("\\Seen",)) for m, w in harness.genmail.gen_messages(40, 3)]
        items.insert(5, (b"", None, ()))  # refused by the server, the rest goes on
        res = d.append_many("Fallback", items, imap=c)
    assert isinstance(res[5], Exception)
    assert [r for i, r in enumerate(res) if i != 5] == list(range(1, 41))
    msgs = d.fetch_folder("Fallback")
    assert len(msgs) == 40 and all(m["flags"] == {"\\Seen"} for m in msgs.values())
    # the server still runs what it no longer announces (why tests read the rawlog)
    with d.session() as c:
        typ, data = c._simple_command("ENABLE", "CONDSTORE")
        assert typ == "OK"


def test_fresh_dovecot_is_empty(fresh_dovecot):
    assert fresh_dovecot.fetch_folder("INBOX") == {}
    assert {f[0] for f in fresh_dovecot.list_folders()} == {"INBOX", "Sent", "Trash"}
