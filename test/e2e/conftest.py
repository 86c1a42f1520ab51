"""Fixtures for the end-to-end suite: the built binary, root, namespaces."""
import os
import pathlib
import shutil

import pytest

from netns import Net

ROOT = pathlib.Path(__file__).resolve().parents[2]
ZTNA = pathlib.Path(os.environ.get("ZTNA_BIN") or ROOT / "ztna")


@pytest.fixture(scope="session")
def ztna():
    if not ZTNA.exists():
        pytest.fail("%s is missing: run 'make' first" % ZTNA)
    return str(ZTNA)


@pytest.fixture
def root():
    if os.geteuid() != 0:
        pytest.skip("needs root (CAP_NET_ADMIN) for network namespaces; "
                    "CI runs as root")
    for tool in ("ip", "nft"):
        if not shutil.which(tool):
            pytest.fail("%s is missing: apt-get install iproute2 nftables"
                        % tool)


@pytest.fixture
def net(root, request):
    n = Net(tag=request.node.name[-12:].strip("_[]").replace("_", "") or None)
    try:
        yield n
    finally:
        n.cleanup()
