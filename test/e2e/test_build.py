"""The build recipe on machines laid out differently from this one."""
import os
import pathlib
import subprocess

DEPS = pathlib.Path(__file__).resolve().parents[2] / "third_party" / "deps.sh"


def archive(tmp_path, deb822=None, one_line=None, **env):
    e = dict(os.environ)
    e["ZTNA_APT_DEB822"] = str(tmp_path / "debian.sources")
    e["ZTNA_APT_LIST"] = str(tmp_path / "sources.list")
    e.pop("ZTNA_DEBIAN_URI", None)
    e.pop("ZTNA_DEBIAN_KEY", None)
    e.update(env)
    if deb822 is not None:
        (tmp_path / "debian.sources").write_text(deb822)
    if one_line is not None:
        (tmp_path / "sources.list").write_text(one_line)
    return subprocess.run([str(DEPS), "--print-archive"], env=e,
                          capture_output=True, text=True)


def test_deb822_sources(tmp_path):
    p = archive(tmp_path, deb822=(
        "Types: deb\nURIs: http://mirror.test/debian\nSuites: bookworm\n"
        "Components: main\nSigned-By: /k/debian.gpg\n\n"
        "Types: deb\nURIs: http://mirror.test/debian-security\n"
        "Suites: bookworm-security\nSigned-By: /k/debian.gpg\n"))
    assert p.returncode == 0, p.stderr
    assert p.stdout == "http://mirror.test/debian /k/debian.gpg\n"


def test_one_line_sources_list(tmp_path):
    """A plain sources.list, as older installs and many images have."""
    p = archive(tmp_path, one_line=(
        "# comment\n"
        "deb http://security.test/debian-security bookworm-security main\n"
        "deb [arch=amd64 signed-by=/k/archive.gpg] http://mirror.test/debian"
        " bookworm main\n"))
    assert p.returncode == 0, p.stderr
    assert p.stdout == "http://mirror.test/debian /k/archive.gpg\n"
    p = archive(tmp_path, one_line="deb http://mirror.test/debian bookworm "
                "main contrib\n")
    assert p.stdout == ("http://mirror.test/debian "
                        "/usr/share/keyrings/debian-archive-keyring.gpg\n")


def test_no_sources_says_what_to_do(tmp_path):
    p = archive(tmp_path)
    assert p.returncode != 0
    assert "ZTNA_DEBIAN_URI" in p.stderr
    p = archive(tmp_path, ZTNA_DEBIAN_URI="http://mirror.test/debian")
    assert p.returncode == 0
    assert p.stdout.startswith("http://mirror.test/debian ")
