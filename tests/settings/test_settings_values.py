"""The daemon's settings are one frozen value, made once by the parse step; the trees are built
from it, never from ``Options``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from support import parsed_options

from tokend.settings.values import Settings


def test_settings_and_every_group_are_frozen(tmp_path: Path) -> None:
    settings = parsed_options(tmp_path, "--token-ttl", "120").settings
    assert isinstance(settings, Settings)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.metrics = "tcp:9102"  # type: ignore[misc]
    for field in dataclasses.fields(Settings):
        group = getattr(settings, field.name)
        if not dataclasses.is_dataclass(group):
            continue
        first = dataclasses.fields(group)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(group, first, None)
    assert settings.signing.token_ttl == 120
    assert settings.signing.services == ("registry",)


def test_settings_name_where_a_value_came_from(tmp_path: Path) -> None:
    settings = parsed_options(
        tmp_path, "--trusted-proxy", "10.0.0.0/8", environ={"TOKEND_REDIS": "redis://cache"}
    ).settings
    assert settings.source("redis") == "TOKEND_REDIS"
    assert settings.source("trusted-proxy") == "--trusted-proxy"
    assert settings.source("token-ttl") == "--token-ttl"


def test_settings_are_made_once_and_kept(tmp_path: Path) -> None:
    """The key is loaded and the policy read in the parse step, not again per service."""
    options = parsed_options(tmp_path)
    assert options.settings is options.settings
    assert options.settings.policy.loaded.policy.users.keys() == {"a"}
