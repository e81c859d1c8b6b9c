"""A 2-minute soak (tools/soak 2 --seed 10) against the binary under test.

tools/soak, loaded as a module, runs convoyfs through a FaultProxy that
cuts every open connection every 5-20 s while another client appends,
expunges, flags and moves messages and the mount moves, deletes, copies
in and reads them; then it lets everything through, waits for the mount
to be quiet and checks the tree, a sample of bodies byte for byte, every
Message-ID of its ledger, that no write failed, that the daemon exits 0
with no sanitizer report, and that RSS and open descriptors stayed flat
(tools/soak's docstring says how). Its Dovecot, proxy and mount are
stopped by pid and unmounted on every path (Soak.teardown).

The longer run (tools/soak [MINUTES], 30 by default) is not part of CI.
"""

import harness

MINUTES = 2
SEED = 10


def test_soak_2_minutes(convoyfs_bin):
    soak = harness.load_tool("soak")
    s = soak.Soak(MINUTES, SEED, binary=convoyfs_bin, out=lambda x: print(x, flush=True))
    ok = s.run()
    summary = s.summary()
    print(summary)
    assert ok, "the soak failed:\n" + summary
