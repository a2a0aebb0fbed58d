"""What read_json accepts as a policy file, and how it parses one without freezing the daemon.

Only regular files are read (a FIFO would wait for a writer forever), up to a bound; the parse
walks the top three levels itself so that json's C decoder, which holds the GIL, never runs for
more than one rule at a time, and a stopping daemon ends it between two.
"""

from __future__ import annotations

import json
import os
import socket
from base64 import b64encode
from pathlib import Path
from threading import Event
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from realms import HandFiredWorkers
from support import (
    accepts,
    get_json_over_unix,
    start_twistd,
    stop_process,
    wait_for,
    write_key_pair,
    write_policy,
)
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from tokend.policy import files
from tokend.policy.files import MAX_POLICY_FILE_BYTES, read_json
from tokend.policy.holder import PolicyHolder
from tokend.policy.model import PolicyError
from tokend.policy.reload import PolicyReloader
from tokend.unique_json import DuplicateKey, unique_keys


def refusal(path: Path) -> str:
    with pytest.raises(PolicyError) as caught:
        read_json(path)
    assert caught.value.file == str(path)
    return caught.value.reason


def test_only_a_regular_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "directory").mkdir()
    assert refusal(tmp_path / "directory") == "not a regular file (a directory)"
    (tmp_path / "device").symlink_to("/dev/null")
    assert refusal(tmp_path / "device") == "not a regular file (a character device)"
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(tmp_path / "socket"))
        assert refusal(tmp_path / "socket") == "not a regular file (a socket)"
    assert refusal(tmp_path / "missing") == "file not found"


def test_a_link_to_a_regular_file_is_followed(tmp_path: Path) -> None:
    """ConfigMaps are links (users.json -> ..data/users.json -> ..2026_…/users.json)."""
    (tmp_path / "target.json").write_text('{"a": [1, 2]}')
    (tmp_path / "users.json").symlink_to("target.json")
    assert read_json(tmp_path / "users.json") == {"a": [1, 2]}


def test_a_file_over_the_bound_is_refused_with_the_bound_named(tmp_path: Path) -> None:
    """64 MiB, three times the largest policy measured; a sparse file costs nothing to make."""
    assert MAX_POLICY_FILE_BYTES == 64 * 1024 * 1024
    big = tmp_path / "users.json"
    with big.open("wb") as stream:
        stream.truncate(MAX_POLICY_FILE_BYTES + 1)
    assert refusal(big) == "larger than 67108864 bytes (64 MiB), the most a policy file may hold"
    with big.open("r+b") as stream:
        stream.truncate(MAX_POLICY_FILE_BYTES)
    assert refusal(big) == "Expecting value", "a file of exactly the bound is read"


def test_the_bound_holds_for_what_is_read_whatever_the_size_says(tmp_path: Path) -> None:
    """/proc files say they are empty; a file may also grow between fstat and read."""
    with pytest.raises(PolicyError) as caught:
        read_json(Path("/proc/self/status"), limit=16)
    assert caught.value.reason.startswith("larger than 16 bytes")


def test_deep_nesting_is_refused_at_the_top_and_inside_an_entry(tmp_path: Path) -> None:
    for text in ("[" * 100_000, '{"alice": {"repositories": ' + "[" * 100_000 + "}}"):
        (tmp_path / "deep.json").write_text(text)
        assert refusal(tmp_path / "deep.json") == "nested too deeply to be a policy"


def test_errors_keep_their_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    path.write_text('{\n  "alice": {"pass_hash": "x"},\n  "bob": {"pass_hash" "y"}\n}\n')
    with pytest.raises(PolicyError) as caught:
        read_json(path)
    assert (caught.value.line, caught.value.column) == (3, 23)
    assert caught.value.reason == "Expecting ':' delimiter"
    path.write_text('{"alice": {}, "bob": {}, "alice": {"x": 1}}')
    assert refusal(path) == 'duplicate key "alice"'


def entries(users: int, rules_of_the_big_one: int) -> dict[str, Any]:
    document: dict[str, Any] = {
        f"user{n}": {"pass_hash": "$2b$04$" + "x" * 53, "repositories": {f"user{n}/**": ["pull"]}}
        for n in range(users)
    }
    rules = {f"big/{n}": ["pull", "push"] for n in range(rules_of_the_big_one)}
    document["big"] = {"repositories": rules}
    return document


def pieces(value: Any, start: int, levels: int) -> list[tuple[int, int]]:
    """Where, in json.dumps(value) written at ``start``, each value below ``levels`` lies."""
    if levels == 0 or not isinstance(value, dict | list):
        return [(start, start + len(json.dumps(value)))]
    found, at = [], start + 1
    for key, item in value.items() if isinstance(value, dict) else enumerate(value):
        at += len(json.dumps(key)) + 2 if isinstance(value, dict) else 0
        found += pieces(item, at, levels - 1)
        at += len(json.dumps(item)) + 2
    return found


def test_the_c_decoder_gets_one_rule_at_a_time() -> None:
    """json's C decoder never lets go of the GIL until it calls back into Python, so the
    reactor runs only if it is handed small pieces: each call here is one value below the top
    three levels (one rule's actions, a hash, an anonymous rule), however large the document
    and however many rules one user has."""
    users = entries(5_000, rules_of_the_big_one=50_000)
    anonymous = {"blacklist": False, "repositories": [f"pub/{n}/**" for n in range(100_000)]}
    for document in (users, anonymous):
        text = json.dumps(document)
        decoder = files.PolicyDecoder()
        scan, spans = decoder.scan, []

        def recording(text: str, index: int, scan: Any = scan, spans: Any = spans) -> Any:
            value, end = scan(text, index)
            spans.append((index, end))
            return value, end

        decoder.scan = recording
        assert decoder.decode(text) == document
        assert len(text) > 1_000_000
        assert set(spans) <= set(pieces(document, 0, files.WALKED_LEVELS))
        assert max(end - start for start, end in spans) < 100


def test_a_stop_ends_a_parse_between_entries() -> None:
    stop = Event()
    stop.set()
    with pytest.raises(files.LoadStopped):
        files.PolicyDecoder(stop).decode(json.dumps(entries(10, 10)))


# The decoder must be json.loads (with duplicate keys refused), result for result and error for
# error. JSON texts are built as text, so duplicate keys, NaN, escapes and odd spacing all occur.
_SPACE = st.sampled_from(["", " ", "\n", "\t", "\r\n  ", "\f"])
_KEY = st.sampled_from(["a", "b", "", "é", "\\u00e9", '\\"', "\\ud83d\\ude00", "\\x"])
_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=6),
).map(lambda value: json.dumps(value, ensure_ascii=False))


def _array(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    item = st.builds(lambda a, value, b: a + value + b, _SPACE, children, _SPACE)
    return st.builds(lambda a, items: "[" + a + ",".join(items) + "]", _SPACE, st.lists(item))


def _object(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    member = st.builds(
        lambda a, key, b, c, value, d: f'{a}"{key}"{b}:{c}{value}{d}',
        _SPACE,
        _KEY,
        _SPACE,
        _SPACE,
        children,
        _SPACE,
    )
    return st.builds(lambda a, items: "{" + a + ",".join(items) + "}", _SPACE, st.lists(member))


_TEXT = st.builds(
    lambda a, value, b: a + value + b,
    _SPACE,
    st.recursive(_SCALAR, lambda c: st.one_of(_array(c), _object(c)), max_leaves=25),
    _SPACE,
)
_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text()),
    lambda c: st.one_of(st.lists(c), st.dictionaries(st.text(), c)),
    max_leaves=25,
)
_EDIT = st.tuples(
    st.integers(min_value=0),
    st.sampled_from(["insert", "delete", "replace"]),
    st.sampled_from(list('{}[]",: \n\\0-1e.tfnNI\ufeff')),
)


def _edited(text: str, edits: list[tuple[int, str, str]]) -> str:
    for position, how, char in edits:
        at = position % (len(text) + 1)
        if how == "insert":
            text = text[:at] + char + text[at:]
        elif how == "delete":
            text = text[:at] + text[at + 1 :]
        else:
            text = text[:at] + char + text[at + 1 :]
    return text


def _outcome(decode: Any, text: str) -> tuple[object, ...]:
    try:
        return ("value", repr(decode(text)))
    except json.JSONDecodeError as e:
        return ("syntax", e.msg, e.pos)
    except DuplicateKey as e:
        return ("duplicate", e.key)
    except ValueError as e:
        return ("value error", str(e))


def _same_as_json_loads(text: str) -> None:
    expected = _outcome(lambda t: json.loads(t, object_pairs_hook=unique_keys), text)
    assert _outcome(files.PolicyDecoder().decode, text) == expected


@settings(max_examples=600)
@given(st.one_of(_TEXT, _VALUE.map(json.dumps), _VALUE.map(lambda v: json.dumps(v, indent=1))))
def test_the_decoder_gives_what_json_loads_gives(text: str) -> None:
    _same_as_json_loads(text)


@settings(max_examples=1500)
@given(_TEXT, st.lists(_EDIT, min_size=1, max_size=3))
def test_the_decoder_fails_where_json_loads_fails(text: str, edits: list[Any]) -> None:
    _same_as_json_loads(_edited(text, edits))


@given(st.text(alphabet='{}[]",: \n\\0-1e.tfnuNI\ufeffa', max_size=30))
def test_the_decoder_and_json_loads_agree_on_garbage(text: str) -> None:
    _same_as_json_loads(text)


def test_stopping_the_reloader_ends_the_load_in_flight(tmp_path: Path) -> None:
    """twistd stops the reloader before the thread pool, whose stop waits for the thread."""
    write_policy(tmp_path, {"a": ("pw", {"*": ["pull"]})})
    holder = PolicyHolder(files.load_policy(tmp_path).policy, 0)
    workers = HandFiredWorkers()
    reloader = PolicyReloader(tmp_path, holder, Clock(), workers)
    reloader.startService()
    done = reloader.reload("modified")
    reloader.stopService()
    with capturedLogs() as events:
        workers.fire_one()
    assert done.called
    assert (holder.generation, holder.failed_at) == (1, None), "nothing loaded, nothing failed"
    assert [e["log_format"] for e in events] == [
        "policy reload ({reason}) abandoned: the service is stopping"
    ]


def token_status(sock: Path, user: str, password: str) -> int:
    auth = b64encode(f"{user}:{password}".encode()).decode()
    status, _ = get_json_over_unix(
        sock, f"/v2/token?service=svc&account={user}", {"Authorization": f"Basic {auth}"}
    )
    return int(status)


def test_a_fifo_as_users_json_fails_the_reload_and_the_daemon_still_reloads_and_stops(
    tmp_path: Path,
) -> None:
    """Before, the reload thread waited in open() for a writer that never came: later edits
    coalesced behind it forever, and SIGTERM hung joining the thread."""
    config = tmp_path / "config"
    write_policy(config, {"alice": ("alice", {"*": ["pull"]})})
    key_path, cert_path = write_key_pair(tmp_path)
    sock, log = tmp_path / "t.sock", tmp_path / "t.log"
    process = start_twistd(
        "--listen", f"unix:{sock}", "--config-dir", str(config), "--key", str(key_path),
        "--cert", str(cert_path), "--service", "svc",
        log=log,
    )  # fmt: skip
    try:
        wait_for("the socket", lambda: accepts(sock), process=process, log=log)
        good = (config / "users.json").read_text()
        os.mkfifo(config / ".fifo")
        os.replace(config / ".fifo", config / "users.json")
        wait_for(
            "the FIFO refused",
            lambda: "users.json: not a regular file (a FIFO)" in log.read_text(),
            process=process,
            log=log,
        )
        carol = json.loads(good)
        carol["carol"] = carol.pop("alice")
        (config / ".users.json.tmp").write_text(json.dumps(carol))
        os.replace(config / ".users.json.tmp", config / "users.json")
        wait_for(
            "a good edit", lambda: "policy reloaded (" in log.read_text(), process=process, log=log
        )
        assert token_status(sock, "carol", "alice") == 200
        assert token_status(sock, "alice", "alice") == 401
    finally:
        status = stop_process(process, timeout=30)
    assert status == -15, "twistd stopped on SIGTERM"
