"""Shared fixtures. The voice pack is fetched once into the normal cache ($STREAMTTS_HOME or
~/.cache/streamtts) by `make test` before pytest starts; fixtures only load it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/upstream_ref.py etc.


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
    from streamtts.synthesis import Synthesizer

    return Synthesizer(pack)
