"""``--log-format text``: tokend.logs.text_lines writes byte for byte what twistd's
``textFileLogObserver`` writes, for generated events, the realm's real events and the real
twistd."""

from __future__ import annotations

import _string  # type: ignore[import-not-found]
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from io import BytesIO, StringIO
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from realms import SERVICE, TEAM_USERS, Realm
from support import start_twistd, stop_process
from test_json_lines import ask_tokens, deployment  # noqa: F401 - the fixture
from twisted.application.service import Application
from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    capturedLogs,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile

from tokend.logs import text_lines
from tokend.logs.escaping import printable
from tokend.logs.json_lines import LoggingRoot, observer_for_format
from tokend.logs.text_lines import (
    _plain_field,
    format_text_line,
    text_observer_for,
    text_observer_to,
)


def written(make: Callable[[Any], Callable[[LogEvent], None]], event: LogEvent) -> Any:
    """What an observer made by ``make`` writes for ``event`` (a text file), or the exception
    it raises, as (type, text)."""
    out = StringIO()
    try:
        make(out)(event)
    except Exception as e:
        return (type(e), str(e))
    return out.getvalue()


def assert_same(event: LogEvent) -> str:
    """Twisted's text and ours for ``event`` are equal; returns it."""
    twisted = written(textFileLogObserver, event)
    ours = written(text_observer_to, event)
    assert ours == twisted
    again = written(text_observer_to, event)  # from the caches now
    assert again == twisted
    return str(twisted)


class Wrapped:
    """A value with attributes and items for ``{a.b}`` and ``{a[0]}``."""

    real = "attribute"

    def __getitem__(self, key: Any) -> str:
        return f"item {key!r}"

    def __repr__(self) -> str:
        return "<Wrapped>"


class Unformattable:
    def __format__(self, spec: str) -> str:
        raise ValueError("no format for me")

    def __repr__(self) -> str:
        return "<Unformattable>"


class Unprintable:
    """Fails in ``__format__`` and in ``repr``: Twisted's 'MESSAGE LOST' path."""

    def __format__(self, spec: str) -> str:
        raise ValueError("no")

    def __repr__(self) -> str:
        raise ValueError("no repr either")


FIELD_NAMES = ("a", "b", "account", "x y", "é", "log_namespace", "missing")
VALUES = st.one_of(
    st.text(),
    st.text().map(printable),
    st.integers(),
    st.just(10**4400),  # str() refuses it: too many digits
    st.booleans(),
    st.none(),
    st.floats(),
    st.lists(st.text(max_size=5), max_size=3),
    st.tuples(st.integers(), st.text(max_size=3)),
    st.sampled_from([LogLevel.warn, Wrapped(), Unformattable(), b"bytes\n", 1.5j]),
    st.just(lambda: "called"),
)
LITERALS = st.one_of(
    st.text(alphabet=st.characters(exclude_characters="{}"), max_size=8),
    st.sampled_from(["{{", "}}", "\n", "\r\n", "\t", "\x1b[31m", "\u2028", "é€😀", "\\"]),
)
FIELDS = st.one_of(
    st.sampled_from(FIELD_NAMES).map(lambda name: "{" + name + "}"),
    st.sampled_from(
        [
            "{a!r}", "{a!s}", "{a!a}", "{a:>6}", "{a:{b}}", "{a.real}", "{a[0]}", "{a[k]}",
            "{f()}", "{}", "{0}", "{a.b()}", "{", "}", "{a!x}", "{a:", "{٣}",
        ]
    ),
)  # fmt: skip
FORMATS = st.lists(st.one_of(LITERALS, FIELDS), max_size=6).map("".join)
TIMES = st.one_of(
    st.floats(min_value=0, max_value=4e9),
    st.integers(min_value=1_700_000_000, max_value=1_700_000_003).flatmap(
        lambda second: st.sampled_from(
            [second, second + 0.0, second + 0.5, second + 0.999998, second + 0.9999995,
             second + 0.99999949, second + 0.9999999, second + 0.999999]
        )
    ),
    st.floats(min_value=-1e6, max_value=0),
    st.sampled_from([None, "not a time", 1e300, float("nan")]),
)  # fmt: skip


@st.composite
def events(draw: st.DrawFn) -> LogEvent:
    event: LogEvent = {}
    if draw(st.booleans()):
        event["log_format"] = draw(st.one_of(FORMATS, st.sampled_from([None, b"bytes {a}", 3])))
    if draw(st.integers(0, 9)):
        event["log_time"] = draw(TIMES)
    if draw(st.integers(0, 9)):
        event["log_namespace"] = draw(st.sampled_from(["tokend.web.TokenAPI", "n\nx", "é"]))
    if draw(st.integers(0, 9)):
        event["log_level"] = draw(st.sampled_from([*LogLevel.iterconstants(), None]))
    if not draw(st.integers(0, 9)):
        event["log_system"] = draw(
            st.one_of(st.text(max_size=8), st.sampled_from(["tokend.web#info pid 7", None, 3]))
        )
    for name in FIELD_NAMES[:-1]:
        if draw(st.integers(0, 4)):
            event[name] = draw(VALUES)
    if draw(st.booleans()):
        event["f"] = draw(st.sampled_from([lambda: "called", lambda: 1 / 0, "not callable"]))
    return event


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_any_event_is_written_as_twisted_writes_it(event: LogEvent) -> None:
    assert_same(event)


@given(st.text(max_size=6))
def test_a_plain_field_is_what_twisteds_formatter_reads_as_one_key(name: str) -> None:
    first, rest = _string.formatter_field_name_split(name) if name else ("", iter(()))
    plain = first == name and type(first) is str and not list(rest) and not name.endswith("()")
    assert _plain_field(name) == (plain and name != "")


_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")


def _unescaped(text: str) -> str:
    return _ESCAPE.sub(lambda m: "\\" if m[1] == "\\" else chr(int(m[1][1:], 16)), text)


@settings(max_examples=2000)
@given(st.text(alphabet=st.characters(codec=None)))
def test_printable_escapes_everything_isprintable_rejects_and_nothing_else(value: str) -> None:
    """A bidi override or a zero-width space must not make a name read as another on screen;
    and the escaping is reversible, so two different names never log alike."""
    escaped = printable(value)
    assert escaped is not None
    assert escaped.isprintable()
    assert _unescaped(escaped) == value
    kept = _ESCAPE.sub("", escaped)
    assert kept == "".join(c for c in value if c.isprintable() and c != "\\")


@pytest.mark.parametrize(
    "char",
    ["\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u202a", "\u202b", "\u202c",
     "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069", "\ufeff", "\u00a0",
     "\U000e0041"],
)  # fmt: skip
def test_bidi_and_zero_width_characters_are_escaped(char: str) -> None:
    code = ord(char)
    written = f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
    if code < 0x100:
        written = f"\\x{code:02x}"
    assert printable(f"adm{char}in") == f"adm{written}in"
    assert printable("plain name") == "plain name", "the plain space stays"


def test_the_realms_issued_and_refused_events_are_written_as_twisted_writes_them(
    tmp_path: Path,
) -> None:
    realm = Realm(tmp_path, users=TEAM_USERS, services=(SERVICE, "other.test"))
    with capturedLogs() as events:
        realm.call("GET", f"/v2/token?service={SERVICE}&scope=repository:public/hello:pull")
        realm.call(
            "GET",
            f"/v2/token?service={SERVICE}&scope=repository:team/app:pull,push"
            "&scope=repository:secret/x:pull&client_id=d%C3%B6cker%0a%1b[2J",
            user="team",
            password="s3cret",
        )
        realm.call("GET", f"/v2/token?service={SERVICE}", user="foo", password="wrong")
        realm.call("GET", f"/v2/token?service={SERVICE}", user="jörgé€", password="x")
        realm.call("GET", f"/v2/token?service={SERVICE}", user="a\x1b", password="x")
        realm.call("GET", "/v2/token?service=nope")
        realm.call("GET", "/nowhere%0a%E2%80%A8")
        realm.call(
            "POST",
            "/v2/token",
            data=b"grant_type=refresh_token&refresh_token=abc&client_id=x%e2%80%a8",
            headers={b"Content-Type": [b"application/x-www-form-urlencoded"]},
        )
    lines = [assert_same(event) for event in events]
    for event in events:  # as a worker marks its events for the parent's log
        system = f"{event['log_namespace']}#{event['log_level'].name} pid 42"
        marked = assert_same({**event, "log_system": system, "worker_pid": 42})
        assert marked.split(" ", 1)[1].startswith("[tokend.web.TokenAPI#info pid 42] ")
    outcomes = [event.get("outcome") for event in events]
    assert outcomes.count("issued") == 2 and len(events) >= 8
    assert lines[1].endswith(
        "(client_id döcker\\x0a\\x1b[2J) by password: asked ['repository:team/app:pull,push', "
        "'repository:secret/x:pull'], granted ['repository:team/app:pull,push']\n"
    )
    assert "(account 'jörgé€', client_id None)" in "".join(lines)
    assert "(account '', client_id x\\u2028)" in "".join(lines)
    assert all(line.count("\n") == 1 for line in lines), "an escaped value split a line"


def test_a_failure_keeps_twisteds_traceback() -> None:
    with capturedLogs() as events:
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            Logger(namespace="tokend.test").failure("reload of {file} went wrong", file="a.json")
        Logger(namespace="tokend.test").failure("no format", failure=Failure(ValueError("x")))
        Logger(namespace="tokend.test").error("no text at all {x}", x="", log_failure=None)
    texts = [assert_same(event) for event in events]
    assert "ZeroDivisionError" in texts[0] and "\n\tTraceback" in texts[0]
    assert "ValueError" in texts[1]


def test_events_without_text_write_nothing() -> None:
    for event in ({}, {"log_format": None}, {"log_format": ""}, {"log_format": "{a}", "a": ""}):
        assert format_text_line(event) is None
        assert written(textFileLogObserver, event) == ""


def test_braces_calls_and_missing_fields_as_twisted_formats_them() -> None:
    base: LogEvent = {"log_time": 1_800_000_000.5, "log_namespace": "n", "log_level": LogLevel.info}
    cases = [
        {"log_format": "{{literal}} {a} }}{{", "a": 1},
        {"log_format": "{f()} and {f}", "f": lambda: "called"},
        {"log_format": "{a.real} {a[0]}", "a": Wrapped()},
        {"log_format": "{missing}"},
        {"log_format": "{a!r:>10}", "a": "x"},
        {"log_format": "{a}", "a": Unformattable()},
        {"log_format": "{a}", "a": Unprintable()},
        {"log_format": "unbalanced {", "a": 1},
        {"log_format": "{a}\nsecond line", "a": "first"},
    ]
    texts = [assert_same({**base, **case}) for case in cases]
    assert texts[0].split(" ", 1)[1] == "[n#info] {literal} 1 }{\n"
    assert texts[3].split("] ", 1)[1].startswith("Unable to format event")
    assert texts[-1].endswith("first\n\tsecond line\n")


def test_the_time_stamp_is_cached_per_second_only_where_rounding_cannot_carry() -> None:
    second = 1_750_000_000
    for when in (second + 0.1, second + 0.9999994, second + 0.9999996, second + 0.99999999):
        text = assert_same({"log_format": "x", "log_time": when})
        rounded = second + 1 if when - second >= 0.9999995 else second
        assert text == written(textFileLogObserver, {"log_format": "x", "log_time": rounded})


@pytest.fixture
def berlin() -> Iterator[None]:
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Berlin"
    time.tzset()
    yield
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def test_the_offset_follows_daylight_saving_time_to_the_second(berlin: None) -> None:
    """2027-03-28 01:00:00 UTC: Berlin goes from +0100 to +0200."""
    change = 1_806_195_600
    texts = [
        assert_same({"log_format": "x", "log_time": change + delta})
        for delta in (-1.5, -0.25, 0.0, 0.25, 1.0)
    ]
    assert [t.split(" ")[0][-5:] for t in texts] == ["+0100", "+0100", "+0200", "+0200", "+0200"]


def test_bytes_files_get_utf8_as_from_twisted() -> None:
    event: LogEvent = {"log_format": "{a}", "a": "é€", "log_time": 1.0, "log_namespace": "n"}
    ours, twisted = BytesIO(), BytesIO()
    text_observer_to(ours)(event)
    textFileLogObserver(twisted)(event)
    assert ours.getvalue() == twisted.getvalue() and "é€".encode() in ours.getvalue()


def test_the_caches_stay_bounded() -> None:
    for n in range(text_lines._PLANS_MAX * 2 + 3):
        assert_same({"log_format": f"format {n} {{a}}", "a": n, "log_namespace": f"n{n}"})
    assert len(text_lines._plans) <= text_lines._PLANS_MAX
    assert len(text_lines._systems) <= text_lines._PLANS_MAX


def test_observer_for_writes_where_twistd_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_path = tmp_path / "tokend.log"
    observer = text_observer_for({"logfile": str(log_path), "nodaemon": False})
    assert observer is not None
    assert isinstance(observer._outFile, LogFile)  # twistd's, with its size rotation
    assert observer._outFile.rotateLength == LogFile.fromFullPath(str(tmp_path / "t")).rotateLength
    event: LogEvent = {"log_format": "hello {x}", "x": 1, "log_time": 2.0, "log_namespace": "n"}
    observer(event)
    assert log_path.read_text() == written(textFileLogObserver, event)
    for config in ({"logfile": "-", "nodaemon": True}, {"logfile": None, "nodaemon": True}):
        stdout = text_observer_for(config)
        assert stdout is not None
        stdout(event)
        assert capsys.readouterr().out == written(textFileLogObserver, event)


def test_twistd_keeps_its_own_choice_where_it_is_not_a_text_file() -> None:
    assert text_observer_for({"logfile": "x.log", "syslog": True}) is None
    assert text_observer_for({"logfile": None, "logger": "tokend.json_log.observer"}) is None
    assert text_observer_for({"logfile": "-", "nodaemon": False}) is None  # twistd's refusal stands
    assert observer_for_format("text", {"syslog": True}) is None


def test_the_text_format_hands_twistds_application_the_fast_observer(tmp_path: Path) -> None:
    observer = observer_for_format("text", {"logfile": str(tmp_path / "t.log")})
    application = Application("registry-token")
    LoggingRoot(observer).setServiceParent(application)
    installed = application.getComponent(ILogObserver)
    assert installed is observer and installed.formatEvent is format_text_line


def test_twistd_writes_text_lines_and_rotates_on_sigusr1(
    tmp_path: Path,
    deployment: list[str],  # noqa: F811
) -> None:
    log = tmp_path / "tokend.log"
    process = start_twistd(*deployment, log=log)
    try:
        ask_tokens(tmp_path / "run" / "tokend.sock", process)
        deadline = time.monotonic() + 10
        while "issued" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        process.send_signal(signal.SIGUSR1)
        rotated = tmp_path / "tokend.log.1"
        while not rotated.exists():
            assert time.monotonic() < deadline, "SIGUSR1 did not rotate the log"
            time.sleep(0.05)
    finally:
        stop_process(process)
    before = rotated.read_text()
    lines = before.splitlines()
    assert "twistd" in lines[0] and "starting up" in lines[0]
    (issued,) = [line for line in lines if "issued" in line]
    assert issued.split(" ", 2)[1] == "[tokend.web.TokenAPI#info]"
    assert issued.endswith("asked ['repository:pub/x:pull'], granted ['repository:pub/x:pull']")
    assert log.read_text().rstrip().endswith("Server Shut Down.")
