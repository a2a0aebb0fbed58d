"""``bash tests/run`` as the README's "Set up" describes it: the Debian packages it installs are
the ones the README names, and it leaves the machine's services alone.

tests/run runs here in a copy of the checkout whose ``.venv/bin/python`` only records how it was
called, with ``service``, ``systemctl``, ``invoke-rc.d``, ``apt-get`` and ``id`` stubbed on the
PATH: what the script would do to the machine is what the stubs saw.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support import REPO, doc_section

RECORDER = '#!/bin/sh\necho "{name} $*" >> "{calls}"\n'
ALL_THE_PACKAGES = re.compile(r"^debian_packages=\(([^)]*)\)", re.MULTILINE)


def debian_packages() -> list[str]:
    found = ALL_THE_PACKAGES.search((REPO / "tests" / "run").read_text())
    assert found, "tests/run lists its Debian packages in debian_packages=(...)"
    return found.group(1).split()


def readme_packages() -> dict[str, str]:
    """The Set up section's table: package -> what the suite runs from it."""
    rows = re.findall(r"^\| `([a-z0-9.+-]+)` \| (.+?) \|$", doc_section("Set up"), re.MULTILINE)
    return dict(rows)


def test_the_readme_names_every_package_tests_run_installs_and_what_for() -> None:
    named = readme_packages()
    assert list(named) == debian_packages()
    assert all(len(purpose.split()) >= 3 for purpose in named.values()), named


def run_tests_run(
    tmp_path: Path, *, uid: int, python3_can_make_a_venv: bool = True
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """tests/run in a stand-in checkout; returns its result and every stubbed call, in order."""
    checkout, stubs, calls = tmp_path / "checkout", tmp_path / "stubs", tmp_path / "calls"
    (checkout / "tests").mkdir(parents=True)
    shutil.copy2(REPO / "tests" / "run", checkout / "tests" / "run")
    (checkout / ".venv" / "bin").mkdir(parents=True)
    stubs.mkdir()
    recorders = {
        checkout / ".venv" / "bin" / "python": "python",
        **{stubs / name: name for name in ("service", "systemctl", "invoke-rc.d", "apt-get")},
    }
    for path, name in recorders.items():
        path.write_text(RECORDER.format(name=name, calls=calls))
    (stubs / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    if not python3_can_make_a_venv:  # the one on the PATH lacks ensurepip
        (stubs / "python3").write_text("#!/bin/sh\nexit 1\n")
    for stub in [*recorders, stubs / "id", stubs / "python3"]:
        if stub.exists():
            stub.chmod(0o755)
    result = subprocess.run(
        ["bash", str(checkout / "tests" / "run"), "--collect-only", "-q"],
        env={"PATH": f"{stubs}:/usr/local/bin:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, calls.read_text().splitlines() if calls.exists() else []


def present_here() -> bool:
    """Whether tests/run finds every package present on this machine (it does wherever the
    suite runs after tests/run has installed them, as in CI): its own present() decides."""
    script = (REPO / "tests" / "run").read_text()
    function = re.search(r"^present\(\) \{\n.*?^\}\n", script, re.MULTILINE | re.DOTALL)
    assert function, "tests/run decides with a function present()"
    checks = " && ".join(f"present {package}" for package in debian_packages())
    return subprocess.run(["bash", "-c", function.group(0) + checks], check=False).returncode == 0


@pytest.fixture
def everything_installed() -> None:
    if not present_here():
        pytest.skip("the Debian packages tests/run installs are not all here")


@pytest.mark.parametrize("uid", [0, 1000], ids=["root", "a user"])
def test_tests_run_touches_no_service_and_installs_nothing_present(
    tmp_path: Path, uid: int, everything_installed: None
) -> None:
    result, calls = run_tests_run(tmp_path, uid=uid)
    assert result.returncode == 0, result.stderr
    assert not [c for c in calls if not c.startswith("python ")], calls
    assert calls[-1] == "python -m pytest --collect-only -q", calls
    assert "apt-get" not in result.stderr


def test_tests_run_as_root_installs_what_is_missing_without_removing_anything(
    tmp_path: Path, everything_installed: None
) -> None:
    result, calls = run_tests_run(tmp_path, uid=0, python3_can_make_a_venv=False)
    assert result.returncode == 0, result.stderr
    machine = [c for c in calls if not c.startswith("python ")]
    assert machine == [
        "apt-get update -qq",
        "apt-get install -y -qq --no-install-recommends --no-remove python3-venv",
    ]


def test_tests_run_as_a_user_prints_the_apt_get_line_and_goes_on(
    tmp_path: Path, everything_installed: None
) -> None:
    result, calls = run_tests_run(tmp_path, uid=1000, python3_can_make_a_venv=False)
    assert result.returncode == 0, result.stderr
    assert not [c for c in calls if not c.startswith("python ")], calls
    assert "sudo apt-get install --no-install-recommends --no-remove python3-venv" in result.stderr
