"""The development key pair never writes through a symbolic link (issue #20.12): not at daemon
start-up (``--dev-cert``, through ``ensure_dev_cert``), not in ``tokend dev-cert``; ``--force``
replaces a link itself, never its target."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import load_certificate, parsed_options

from tokend.cli import main
from tokend.signing.devcert import LinkRefusedError, ensure_dev_cert, write_dev_cert
from tokend.signing.keys import load_signing_key

VICTIM = b"an operator's file, not a certificate\n"


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The review's reproduction: no key, and RootCA.crt -> ../victim.txt."""
    certs = tmp_path / "certs"
    certs.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    (certs / "RootCA.crt").symlink_to("../victim.txt")
    return certs / "RootCA.key", certs / "RootCA.crt", victim


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_ensure_dev_cert_refuses_a_certificate_link_and_leaves_its_target(
    planted: tuple[Path, Path, Path],
) -> None:
    key_path, cert_path, victim = planted
    with pytest.raises(LinkRefusedError) as refused:
        ensure_dev_cert(key_path, cert_path)
    assert str(refused.value) == (
        f"{cert_path} is a symbolic link to ../victim.txt; refusing to write through it"
    )
    assert victim.read_bytes() == VICTIM
    assert not key_path.exists()
    assert cert_path.is_symlink()


def test_the_daemons_dev_cert_option_refuses_it_in_one_sentence(
    tmp_path: Path, planted: tuple[Path, Path, Path]
) -> None:
    from twisted.python.usage import UsageError

    key_path, cert_path, victim = planted
    with pytest.raises(UsageError) as refused:
        parsed_options(tmp_path, "--key", str(key_path), "--cert", str(cert_path), "--dev-cert")
    assert str(refused.value) == (
        f"--dev-cert: {cert_path} is a symbolic link to ../victim.txt; refusing to write through it"
    )
    assert victim.read_bytes() == VICTIM
    assert not key_path.exists()


@pytest.mark.parametrize("which", ["key", "cert"])
def test_tokend_dev_cert_refuses_a_link_in_one_sentence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    paths = {"key": tmp_path / "k.key", "cert": tmp_path / "c.crt"}
    paths[which].symlink_to(victim)
    out = io.StringIO()
    code = main(
        ["dev-cert", "--key", str(paths["key"]), "--cert", str(paths["cert"])],
        stdin=io.StringIO(),
        stdout=out,
    )
    assert (code, out.getvalue()) == (1, "")
    assert capsys.readouterr().err == (
        f"tokend dev-cert: {paths[which]} is a symbolic link to {victim}; "
        "refusing to write through it\n"
    )
    assert victim.read_bytes() == VICTIM
    assert not any(path.exists() for name, path in paths.items() if name != which)


@pytest.mark.parametrize("dangling", [False, True])
def test_force_replaces_the_links_themselves(tmp_path: Path, dangling: bool) -> None:
    victim = tmp_path / "victim.txt"
    if not dangling:
        victim.write_bytes(VICTIM)
    key_path, cert_path = tmp_path / "k.key", tmp_path / "c.crt"
    key_path.symlink_to(victim)
    cert_path.symlink_to(victim)
    out = io.StringIO()
    args = ["dev-cert", "--key", str(key_path), "--cert", str(cert_path), "--force", "--cn", "f"]
    assert main(args, stdin=io.StringIO(), stdout=out) == 0
    assert not key_path.is_symlink()
    assert not cert_path.is_symlink()
    assert load_certificate(cert_path).subject.rfc4514_string() == "CN=f"
    load_signing_key(key_path, cert_path, allow_loose_permissions=False)
    if dangling:
        assert not victim.exists()
    else:
        assert victim.read_bytes() == VICTIM
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["k.key", "c.crt"] + ([] if dangling else ["victim.txt"])
    )  # no temporary file left behind


@pytest.mark.usefixtures("permissive_umask")
@pytest.mark.parametrize("force", [False, True])
def test_the_key_is_0600_and_the_certificate_0644_under_any_umask(
    tmp_path: Path, force: bool
) -> None:
    key_path, cert_path = tmp_path / "k.key", tmp_path / "c.crt"
    if force:
        key_path.write_bytes(b"old")
        key_path.chmod(0o666)
    write_dev_cert(key_path, cert_path, overwrite=force)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644


def test_the_certificate_is_0644_under_a_strict_umask(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        write_dev_cert(tmp_path / "k.key", tmp_path / "c.crt")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "c.crt").stat().st_mode) == 0o644


def test_ensure_dev_cert_replaces_the_certificate_of_a_lost_key(tmp_path: Path) -> None:
    """A regular certificate without its key belongs to no key: it is replaced, by rename."""
    key_path, cert_path = tmp_path / "k.key", tmp_path / "c.crt"
    write_dev_cert(key_path, cert_path)
    old = cert_path.stat().st_ino
    key_path.unlink()
    assert ensure_dev_cert(key_path, cert_path) is True
    assert cert_path.stat().st_ino != old
    load_signing_key(key_path, cert_path, allow_loose_permissions=False)
