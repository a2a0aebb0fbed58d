"""What ``tokend --help`` and ``twistd registry-token --help`` print is read in a terminal:
plain text, no reStructuredText markup from the docstrings it is taken from."""

from __future__ import annotations

import argparse
import re

import pytest

from tokend.cli import build_parser
from tokend.tap import Options

MARKUP = re.compile(r"``|:[a-z]+:`|`[^`\s][^`]*`_")
"""Double backticks, roles such as :func:`x`, and `links`_."""


def _help_texts() -> dict[str, str]:
    parser = build_parser()
    texts = {"tokend --help": parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, command in action.choices.items():
                texts[f"tokend {name} --help"] = command.format_help()
    texts["twistd registry-token --help"] = str(Options(environ={}))
    return texts


@pytest.mark.parametrize("command", sorted(_help_texts()))
def test_help_shows_no_restructuredtext_markup(command: str) -> None:
    text = _help_texts()[command]
    assert text.strip()
    assert not MARKUP.findall(text), text


def test_the_tools_description_is_plain() -> None:
    assert "\nThe tokend tool: what an operator needs around the daemon.\n" in (
        build_parser().format_help()
    )
