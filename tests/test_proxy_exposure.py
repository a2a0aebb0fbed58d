"""A trusted proxy range on a listener bound to every address (the Kubernetes example's
``tcp:5001:interface=0.0.0.0`` with ``10.0.0.0/8``): any host in the range may reach the port
itself and name its own client address. The daemon warns at start-up and ``tokend check-config
--listen … --trusted-proxy …`` warns with the same sentence."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from daemons import announce, parsed
from support import write_policy

from tokend.cli import main
from tokend.client_address import parse_networks
from tokend.proxy_exposure import every_address, proxy_exposure

KUBERNETES = ("tcp:5001:interface=0.0.0.0", "10.0.0.0/8")
"""TOKEND_LISTEN and TOKEND_TRUSTED_PROXY in the README's Kubernetes example."""
EVERY_IPV4 = "0.0.0.0"  # noqa: S104 - an expected answer, bound to nothing


@pytest.mark.parametrize(
    ("listen", "wildcard"),
    [
        ("tcp:5001", EVERY_IPV4),
        ("tcp:5001:interface=0.0.0.0", EVERY_IPV4),
        ("tcp:port=5001:backlog=1024", EVERY_IPV4),
        ("tcp6:5001", "::"),
        (r"tcp6:5001:interface=\:\:", "::"),
        ("tcp:5001:interface=127.0.0.1", None),
        ("tcp:5001:interface=10.1.2.3:backlog=1024", None),
        (r"tcp6:5001:interface=\:\:1", None),
        ("unix:/run/tokend/tokend.sock:mode=660", None),
    ],
)
def test_every_address_is_a_tcp_listener_without_an_address_of_its_own(
    listen: str, wildcard: str | None
) -> None:
    assert every_address(listen) == wildcard


def test_the_kubernetes_examples_listener_and_range_are_warned_about() -> None:
    listen, trusted = KUBERNETES
    warning = proxy_exposure(listen, parse_networks([trusted]))
    assert warning is not None
    assert warning.startswith(f"--trusted-proxy {trusted} with --listen {listen} (every address")
    assert "interface=127.0.0.1" in warning
    assert proxy_exposure("tcp:5001:interface=127.0.0.1", parse_networks([trusted])) is None
    assert proxy_exposure(listen, parse_networks(["127.0.0.1", "::1"])) is None, "the host's own"
    assert proxy_exposure(listen, ()) is None


def test_the_daemon_warns_at_start_up(tmp_path: Path) -> None:
    listen, trusted = KUBERNETES
    options = parsed(tmp_path, "--listen", listen, environ={"TOKEND_TRUSTED_PROXY": trusted})
    warnings = [e for e in announce(options) if e["log_level"].name == "warn"]
    listening = options.settings.listen
    expected = proxy_exposure(
        listening.endpoint, listening.trusted_proxies, "--listen", "TOKEND_TRUSTED_PROXY"
    )
    assert expected is not None
    assert expected.startswith(f"TOKEND_TRUSTED_PROXY {trusted} with --listen {listen}")
    assert [e["exposure"] for e in warnings if "exposure" in e] == [expected]
    quiet = parsed(tmp_path, "--trusted-proxy", trusted)  # tcp:0:interface=127.0.0.1
    assert not [e for e in announce(quiet) if "exposure" in e]


def test_check_config_warns_with_the_daemons_sentence(tmp_path: Path) -> None:
    listen, trusted = KUBERNETES
    write_policy(tmp_path / "config", {})
    out = io.StringIO()
    arguments = ["check-config", "--config-dir", str(tmp_path / "config")]
    code = main([*arguments, "--listen", listen, "--trusted-proxy", trusted], stdout=out)
    assert code == 0
    warnings = [line for line in out.getvalue().splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: {proxy_exposure(listen, parse_networks([trusted]))}"]
    out = io.StringIO()
    assert main([*arguments, "--trusted-proxy", trusted], stdout=out) == 0
    assert "warning" not in out.getvalue()
