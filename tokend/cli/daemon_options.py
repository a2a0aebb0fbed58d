"""The daemon's options as the tool takes them: the same declarations
(:mod:`tokend.settings.options`), the same ``TOKEND_*`` variables and bounds, so a command run
beside the daemon (``docker exec … tokend check-config``) checks what the daemon runs with.
The command line wins over the environment, as for the daemon."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any

from tokend.cli.common import UsageError
from tokend.option_table import Layered, Option, OptionError, layered
from tokend.settings.options import DAEMON

_UNCHANGED: Any = object()


def dest(option: Option) -> str:
    return option.name.replace("-", "_")


def add_option(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    option: Option,
    help: str | None = None,
    default: Any = _UNCHANGED,
    unset: Any = None,
) -> None:
    """``--name`` as the daemon declares it (its help unless the tool says it otherwise; its
    default unless the tool has another): the value is settled by :func:`settle`. ``unset`` is
    what the parsed arguments hold when it is not given: ``argparse.SUPPRESS`` in an action's
    parser leaves what the command's parser took before the action."""
    if default is not _UNCHANGED:
        option = dataclasses.replace(option, default=default)
    text = option.help if help is None else help
    if option.flag:
        parser.add_argument(option.flag_name, action="store_true", default=unset, help=text)
    elif option.repeatable:
        parser.add_argument(
            option.flag_name, action="append", default=unset, metavar=option.metavar, help=text
        )
    else:
        parser.add_argument(option.flag_name, default=unset, metavar=option.metavar, help=text)
    declared: tuple[Option, ...] = parser.get_default("daemon_options") or ()
    parser.set_defaults(daemon_options=(*declared, option))


def settle(args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Each daemon option of the command: the command line, else its TOKEND_* variable, else
    the default, a whole number checked against the daemon's bounds (UsageError naming the
    option or variable); ``args.daemon`` keeps where each came from."""
    declared: tuple[Option, ...] = getattr(args, "daemon_options", None) or ()
    values = layered(declared, lambda option: getattr(args, dest(option)), environ)
    for option in declared:
        value = values[option.name]
        if option.bounds is not None:
            try:
                value = option.whole_number(value, values.source(option.name))
            except OptionError as e:
                raise UsageError(str(e)) from None
        setattr(args, dest(option), value)
    args.daemon = Layered(
        {option.name: getattr(args, dest(option)) for option in declared},
        values.from_environment,
        values.given,
    )


def add_config_dir(parser: argparse.ArgumentParser) -> None:
    """The daemon's --config-dir (TOKEND_CONFIG_DIR), for every command that reads the policy."""
    option = DAEMON["config-dir"]
    add_option(parser, option, f"default {option.default}")
