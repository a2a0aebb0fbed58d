"""``python -m tokend.worker``: one worker of a ``--workers N`` daemon, started by its parent
(:mod:`tokend.daemon.supervisor`). An entry point like twistd's: it parses the daemon's options
into its Settings and builds the serving tree around the parent's socket and link, whose parts
live in :mod:`tokend.daemon.worker_process`."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from typing import Any, cast

from twisted.application.service import MultiService
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
)
from twisted.python import usage

from tokend.daemon.serving_tree import serving_tree
from tokend.daemon.wire import OneProtocol, control
from tokend.daemon.worker_process import Outbox, ParentLink, WorkerSetup, critical_event
from tokend.login.shared_limits.bus import NewsBus
from tokend.tap import Options


def main(argv: Sequence[str] | None = None, reactor: Any = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokend.worker")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--family", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--log-lines", choices=("text", "json", "events"), default="events")
    parser.add_argument("--worker-index", type=int, default=None)
    parser.add_argument("options", nargs=argparse.REMAINDER)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    options_argv = args.options[1:] if args.options[:1] == ["--"] else args.options

    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    channel = socket.socket(fileno=args.control_fd)
    outbox = Outbox(channel, args.log_lines, args.worker_index)
    observer: Any = FilteringLogObserver(
        cast(ILogObserver, outbox), [cast(Any, LogLevelFilterPredicate(LogLevel.info))]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    def refuse(sentence: str) -> int:
        outbox(critical_event(sentence))
        return 1

    options = Options()
    try:
        options.parseOptions(options_argv)
    except usage.UsageError as e:
        return refuse(str(e))
    settings = options.settings
    news = NewsBus()
    link = ParentLink(reactor, news, asks=settings.redis is not None)
    root: MultiService = serving_tree(
        settings, reactor, worker=WorkerSetup(args.listen_fd, args.family, news, link.expose)
    )
    try:
        root.privilegedStartService()
        root.startService()
    except SystemExit:
        return 1  # the sentence is logged (and so with the parent) already
    reactor.addSystemEventTrigger("before", "shutdown", root.stopService)
    outbox.send(control({"ready": os.getpid()}))
    reactor.adoptStreamConnection(channel.fileno(), socket.AF_UNIX, OneProtocol(link))
    channel.close()
    outbox.link = link
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
