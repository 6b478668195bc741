"""Shared pytest fixtures (made visible to every test module by tests/conftest.py).

Engines and servers that several modules need with the same configuration are started once per
test session; a module whose server needs a configuration of its own starts it with
``ThreadServer``/``ProcessServer`` in a fixture of its own.
"""

from __future__ import annotations

import pytest

from support.servers import ProcessServer, shared_engine

API_KEY = "test-key-123"  # the key of `int8_server`

# One `streamtts serve` (onnx-int8 + MelGAN) for the client tests (test_client, test_say, test_web,
# test_client_examples) and the load test (test_loadtest): an API key; no phrase cache, so every
# test measures real synthesis and loaded sessions are synthesized in batches; a fixed capacity of
# 4 (no calibration at start), a queue of 16 that waits up to 120 s, room for 512 sessions.
INT8_SERVER_ARGS = ("--api-key", API_KEY, "--cache-mb", "0", "--capacity", "4", "--queue-size", "16",
                    "--queue-timeout", "120", "--max-sessions", "512")


@pytest.fixture(scope="session")
def torch_engine(pack):
    """The torch engine (torch acoustic model + MelGAN), loaded once (as ``shared_engine(pack)``)."""
    return shared_engine(pack)


@pytest.fixture(scope="session")
def int8_engine(pack):
    """The onnx-int8 engine with MelGAN: its decoder rows are bit-identical batched or alone."""
    from engines.registry import create_models

    return create_models("onnx-int8", vocoder="melgan", pack=pack)


@pytest.fixture(scope="session")
def int8_server(pack):
    """``streamtts serve --engine onnx-int8 --vocoder melgan`` + INT8_SERVER_ARGS, for the session."""
    with ProcessServer(*INT8_SERVER_ARGS, engine="onnx-int8", vocoder="melgan") as srv:
        yield srv
