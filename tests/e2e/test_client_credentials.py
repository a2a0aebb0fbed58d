"""What a client keeps after its login, as docs/identity-tokens.md says: containers/image's
login (skopeo here; podman and buildah share its code) keeps the password, not an identity token.
docker's identity token is test_identity_tokens.py's."""

from __future__ import annotations

import base64
import json

import pytest
from e2e.stack import Stack
from support import doc_section

pytestmark = pytest.mark.e2e


def test_skopeo_login_keeps_the_password_and_asks_for_no_identity_token(stack: Stack) -> None:
    page = " ".join(doc_section("Identity tokens (refresh tokens)").split())
    assert "podman, skopeo and buildah" in page
    said = page.split("podman, skopeo and buildah", 1)[1].split("- **", 1)[0]
    assert "ask for no refresh token" in said and "as `auth`" in said, said

    home = stack.client_home("skopeo-login")
    offset = stack.tokend_log_offset()
    login = stack.skopeo("login", "--tls-verify=false", "-u", "bar", "-p", "bar", stack.registry,
                         home=home)  # fmt: skip
    assert login.ok, login.stderr
    entry = json.loads((home / "auth.json").read_text())["auths"][stack.registry]
    assert entry == {"auth": base64.b64encode(b"bar:bar").decode()}
    logged = stack.tokend_log_since(offset)
    assert "issued GET token to 'bar'" in logged, logged
    assert "refresh token" not in logged, logged
