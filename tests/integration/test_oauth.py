"""OAuth2 login: -o auth=xoauth2 (Google's AUTHENTICATE XOAUTH2) and
-o auth=oauthbearer (RFC 7628), the access token taken where the
password is (password_command). Against the scripted server, which
checks the whole SASL response (user, token, and for OAUTHBEARER host
and port), answers a wrong token with the mechanism's base64 JSON error
challenge and requires the client's answer to it (an empty line for
XOAUTH2, a single %x01 for OAUTHBEARER) before its NO. With and without
SASL-IR; the token never shows in the -o debug=imap trace."""

import base64
import os
import subprocess

import pytest

import harness
import scripted

TOKEN = "ya29.a0AfB_byScripted-Token.0123456789~abcdef/XYZ+w=="
MECHS = ["xoauth2", "oauthbearer"]


def body(i):
    return (b"From: a@b.test\r\nMessage-ID: <o%d@scripted.test>\r\n"
            b"Subject: oauth %d\r\nDate: Mon, 6 May 2024 07:08:09 +0000\r\n\r\n"
            b"body of message %d\r\n" % (i, i, i))


class OAuthServer(scripted.ScriptedImap):
    password = TOKEN


@pytest.fixture
def server():
    made = []

    def make(mech=None, sasl_ir=True, n=2):
        s = OAuthServer()
        caps = [scripted.CAPS]
        if sasl_ir:
            caps.append("SASL-IR")
        if mech:
            caps.append("AUTH=" + mech.upper())
        s.caps = " ".join(caps)
        for i in range(1, n + 1):
            s.add("INBOX", body(i))
        made.append(s)
        return s
    yield make
    for s in made:
        s.cleanup()


def files(m, folder="INBOX"):
    d = os.path.join(m.path, folder)
    return {int(os.getxattr(os.path.join(d, n), "user.convoyfs.uid")): os.path.join(d, n)
            for n in os.listdir(d)}


def token_file(tmp_path, token):
    p = tmp_path / "token"
    p.write_text(token + "\n")
    p.chmod(0o600)
    return str(p)


def secrets(s, mech, port, token):
    """What must never reach the daemon's stderr."""
    blob = s.oauth_expected(mech.upper(), port, token).encode()
    return [token, base64.b64encode(blob).decode()]


def failed_mount(s, tmp_path, convoyfs_bin, **kw):
    """Run convoyfs where it must refuse to mount: exit status, stderr."""
    m = harness.Mount(s, str(tmp_path / "mnt"), str(tmp_path / "cache"),
                      binary=convoyfs_bin, **kw)
    try:
        m.start(wait=False)
        rc = m.proc.wait(60)
        assert not harness.mounted(m.path)
        return rc, m.stderr()
    finally:
        m.stop()
        assert not m.sanitizer_reports(), m.stderr()[-4000:]


@pytest.mark.parametrize("sasl_ir", [True, False], ids=["sasl-ir", "no-sasl-ir"])
@pytest.mark.parametrize("mech", MECHS)
def test_right_token_mounts(server, mount, mech, sasl_ir):
    s = server(mech, sasl_ir)
    m = mount(s, options={"auth": mech}, debug="imap")
    f = files(m)
    assert sorted(f) == [1, 2]
    with open(f[2], "rb") as fh:
        assert fh.read() == s.folders["INBOX"][1].data
    assert os.listdir(m.path) and "INBOX" in os.listdir(m.path)
    # every connection authenticated with the response where SASL-IR
    # puts it, at the first try, and none sent LOGIN
    assert s.authentications, s.commands
    for a in s.authentications:
        assert (a[0], a[1], a[3]) == (mech.upper(), sasl_ir, None), s.authentications
    cmds = list(s.commands)
    assert not any(c.split(" ")[1:2] == ["LOGIN"] for c in cmds if " " in c), cmds
    auth = [c for c in cmds if " AUTHENTICATE " in c][0]
    if sasl_ir:
        assert len(auth.split(" ")) == 4, auth
    else:
        assert auth.split(" ")[2:] == [mech.upper()], auth
    m.stop()
    err = m.stderr()
    assert "C: <" in err and "private bytes not shown>" in err, err[-3000:]
    for secret in secrets(s, mech, s.port, TOKEN):
        assert secret not in err
    # the token is not in the daemon's argv either
    assert not any(TOKEN in a for a in m.argv)


@pytest.mark.parametrize("sasl_ir", [True, False], ids=["sasl-ir", "no-sasl-ir"])
@pytest.mark.parametrize("mech", MECHS)
def test_wrong_token_is_one_clear_line(server, tmp_path, convoyfs_bin, mech, sasl_ir):
    s = server(mech, sasl_ir)
    wrong = "ya29.expired-Token_42"
    rc, err = failed_mount(s, tmp_path, convoyfs_bin, options={"auth": mech},
                           password_command=s.password_command(token_file(tmp_path, wrong)),
                           debug="imap")
    assert rc == 1, err
    # the server saw the wrong token, its challenge was answered as the
    # mechanism wants, and the NO is what convoyfs reports
    assert len(s.authentications) == 1, s.authentications
    got_mech, got_ir, got, answer = s.authentications[0]
    assert (got_mech, got_ir) == (mech.upper(), sasl_ir)
    assert got == s.oauth_expected(mech.upper(), s.port, wrong)
    assert answer == ("" if mech == "xoauth2" else "AQ==")
    status = s.oauth_errors[mech.upper()]["status"]
    scope = s.oauth_errors[mech.upper()]["scope"]
    refused = [ln for ln in err.splitlines() if "refused" in ln]
    assert len(refused) == 1, err
    line = refused[0]
    assert "login as alice refused by server: [AUTHENTICATIONFAILED] Invalid credentials" \
        in line or "login as alice refused by server: Invalid credentials" in line, line
    assert "%s error status %s, scope %s" % (mech.upper(), status, scope) in line, line
    for secret in secrets(s, mech, s.port, wrong):
        assert secret not in err


def test_wrong_token_without_debug_is_the_only_line(server, tmp_path, convoyfs_bin):
    s = server("xoauth2")
    rc, err = failed_mount(s, tmp_path, convoyfs_bin, options={"auth": "xoauth2"},
                           password_command=s.password_command(token_file(tmp_path, "bad")))
    assert rc == 1, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "XOAUTH2 error status 401, scope https://mail.google.com/" in lines[0], lines


@pytest.mark.parametrize("offered", [None, "other"], ids=["no-auth", "other-mech"])
@pytest.mark.parametrize("mech", MECHS)
def test_server_without_the_mechanism_is_refused(server, tmp_path, convoyfs_bin, mech, offered):
    other = {"xoauth2": "oauthbearer", "oauthbearer": "xoauth2"}[mech]
    s = server(other if offered else None)
    rc, err = failed_mount(s, tmp_path, convoyfs_bin, options={"auth": mech})
    assert rc == 1, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert ("server does not offer AUTHENTICATE %s (no AUTH=%s in its capabilities)"
            % (mech.upper(), mech.upper())) in lines[0], lines
    # nothing was sent: no AUTHENTICATE, no LOGIN
    assert not any(" AUTHENTICATE" in c or " LOGIN" in c for c in s.commands), s.commands
    assert TOKEN not in err


def test_bad_auth_value_is_refused(convoyfs_bin, tmp_path):
    mp = tmp_path / "mnt"
    mp.mkdir()
    r = subprocess.run([convoyfs_bin, "-f", "-o", "auth=oauth3,password_command=true",
                        "imaps://alice@127.0.0.1:1", str(mp)],
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert r.returncode != 0
    assert "auth" in r.stderr, r.stderr


@pytest.mark.parametrize("mech", MECHS)
def test_user_with_comma_and_equals(server, mount, mech):
    """OAUTHBEARER's a= is an RFC 5801 saslname: "," as =2C, "=" as =3D
    (the server expects exactly that); XOAUTH2's user= goes as it is."""
    s = server(mech)
    s.user = "al=ice,x@example.test"
    m = mount(s, url="imaps://%s@127.0.0.1:%d" % (s.user.replace("@", "%40"), s.port),
              options={"auth": mech})
    assert sorted(files(m)) == [1, 2]
    got = s.authentications[0][2]
    if mech == "oauthbearer":
        assert got.startswith("n,a=al=3Dice=2Cx@example.test,\x01"), got
    else:
        assert got.startswith("user=al=ice,x@example.test\x01"), got


def test_token_with_a_space_is_refused_before_sending(server, tmp_path, convoyfs_bin):
    s = server("oauthbearer")
    rc, err = failed_mount(s, tmp_path, convoyfs_bin, options={"auth": "oauthbearer"},
                           password_command=s.password_command(token_file(tmp_path, "two words")))
    assert rc == 1, err
    assert "access token is empty or contains a space or a control character" in err, err
    assert not any(" AUTHENTICATE" in c for c in s.commands), s.commands


def test_each_login_takes_a_token_of_the_moment(server, mount, tmp_path):
    """Access tokens expire within the hour and a mount outlives them:
    every login runs password_command again. The server starts taking
    only a new token and the connections are cut; the mount logs in
    again with the new one and sees new mail (XOAUTH2: the relay between
    them would change OAUTHBEARER's port)."""
    from proxy import FaultProxy
    s = server("xoauth2")
    tok = token_file(tmp_path, TOKEN)
    with FaultProxy("127.0.0.1", s.port) as p:
        m = mount(s, url=p.url(user=s.user), options={"auth": "xoauth2"},
                  password_command=s.password_command(tok))
        assert sorted(files(m)) == [1, 2]
        new = "ya29.rotated-Token_7"
        with open(tok, "w") as f:
            f.write(new + "\n")
        s.password = new
        s.add("INBOX", body(3))
        p.cut_open()
        harness.wait_until(lambda: sorted(files(m)) == [1, 2, 3], 60, interval=0.2,
                           what="new mail after logging in with the new token")
        assert any(a[2] == s.oauth_expected("XOAUTH2", s.port, new)
                   for a in s.authentications), s.authentications
        m.stop()
        for secret in (TOKEN, new):
            assert secret not in m.stderr()
