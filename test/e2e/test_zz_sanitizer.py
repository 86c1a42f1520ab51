"""Runs last in the sanitizer pass (make sanitize): the daemons of every
suite before it were built with ASan+UBSan and wrote any report they made
(use after free, leak at exit, undefined behaviour) to a file. There must
be none."""
import glob
import os
import subprocess
import time

import pytest

REPORTS = os.environ.get("ZTNA_SAN_REPORTS")


@pytest.mark.skipif(not REPORTS, reason="only in the sanitizer pass "
                    "(make sanitize sets ZTNA_SAN_REPORTS)")
def test_no_sanitizer_reports():
    # Daemons write leak reports as they exit: wait until none is left.
    end = time.time() + 60
    while time.time() < end:
        if subprocess.run(["pgrep", "-f", os.environ["ZTNA_BIN"]],
                          capture_output=True).returncode != 0:
            break
        time.sleep(0.2)
    files = sorted(glob.glob(os.path.join(REPORTS, "*")))
    text = ""
    for f in files[:5]:
        with open(f, errors="replace") as fh:
            text += "==== %s\n%s\n" % (f, fh.read()[:4000])
    assert not files, "sanitizer reports:\n" + text
