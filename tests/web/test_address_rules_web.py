"""Rules by client address through the realm: the address is the one the realm derives (the
X-Real-IP of a trusted proxy, else the peer), decided per request, so neither a cached login
nor a refresh token carries a grant from one address to another."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from realms import SERVICE, Realm
from support import verify_jwt

from tokend.client_address import TrustedProxies, parse_networks
from tokend.login.credential_cache import CredentialCache

CI_RULES: dict[str, Any] = {
    "team/**": {"actions": ["pull", "push"], "from": ["10.0.0.0/8", "2001:db8::/32"]},
    "*": ["pull"],
}
USERS: Any = {"ci": ("pw", CI_RULES)}
BEHIND_PROXY = TrustedProxies(networks=parse_networks(["127.0.0.0/8"]))
"""StubTreq's peer is 127.0.0.1: here it is the proxy."""


def actions(realm: Realm, real_ip: str | None, **kwargs: Any) -> list[str]:
    code, _, body = realm.get("ci", "pw", real_ip=real_ip, scope="team/app:pull,push", **kwargs)
    assert code == 200, body
    _, claims = verify_jwt(body["token"], realm.certificate)
    return [action for entry in claims["access"] for action in entry["actions"]]


def test_the_address_a_trusted_proxy_names_decides(tmp_path: Path) -> None:
    realm = Realm(tmp_path, users=USERS, proxies=BEHIND_PROXY)
    assert actions(realm, "10.1.2.3") == ["pull", "push"]
    assert actions(realm, "2001:db8::7") == ["pull", "push"]
    assert actions(realm, "192.0.2.7") == ["pull"]
    assert actions(realm, "2001:db9::7") == ["pull"]
    assert actions(realm, None) == ["pull"], "the proxy's own 127.0.0.1 is outside"


def test_a_header_from_an_untrusted_peer_does_not_unlock_a_rule(tmp_path: Path) -> None:
    """Only the UNIX socket's peer is trusted by default: a TCP peer that writes X-Real-IP
    itself is judged by its own address."""
    realm = Realm(tmp_path, users=USERS)
    assert actions(realm, "10.1.2.3") == ["pull"]
    local = {"ci": ("pw", {"team/**": {"actions": ["pull", "push"], "from": ["127.0.0.1"]}})}
    realm = Realm(tmp_path / "local", users=local)
    assert actions(realm, "192.0.2.7") == ["pull", "push"], "the peer's own address counts"


def test_a_cached_login_carries_no_rights_to_another_address(tmp_path: Path) -> None:
    realm = Realm(tmp_path, users=USERS, proxies=BEHIND_PROXY, cache=CredentialCache(ttl=60))
    assert actions(realm, "10.1.2.3") == ["pull", "push"]
    runs = realm.bcrypt_runs
    assert actions(realm, "192.0.2.7") == ["pull"]
    assert actions(realm, "10.1.2.3") == ["pull", "push"]
    assert realm.bcrypt_runs == runs, "both answered from the cached login"


def test_a_refresh_token_carries_no_rights_to_another_address(tmp_path: Path) -> None:
    realm = Realm(tmp_path, users=USERS, proxies=BEHIND_PROXY, refresh_ttl=3600)
    code, _, body = realm.get(
        "ci",
        "pw",
        real_ip="10.1.2.3",
        scope="team/app:pull,push",
        query="&client_id=docker&offline_token=true",
    )
    assert code == 200, body
    token = body["refresh_token"]

    def refreshed_from(real_ip: str) -> str:
        form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("service", SERVICE),
            ("client_id", "docker"),
            ("scope", "repository:team/app:pull,push"),
        ]
        code, _, body = realm.finish(realm.start_post(form, {b"X-Real-IP": [real_ip.encode()]}))
        assert code == 200, body
        return str(body["scope"])

    assert refreshed_from("192.0.2.7") == "repository:team/app:pull"
    assert refreshed_from("10.200.0.1") == "repository:team/app:pull,push"
