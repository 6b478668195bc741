"""The tests' harness: real servers on loopback and their clients.

* :mod:`support.servers`: ``free_port()``, ``ThreadServer`` (``create_app`` in a thread of the
  test process), ``ProcessServer`` (``streamtts serve`` as a child process), ``shared_engine``.
* :mod:`support.ws`: WebSocket helpers (``ws_connect``, ``jsend``, ``collect``, ``events``).
* :mod:`support.fixtures`: the shared fixtures (``int8_server``, ``torch_engine``, ``int8_engine``),
  registered for every module by tests/conftest.py.
"""

from support.servers import HOST, ROOT, ProcessServer, ThreadServer, free_port, shared_engine

__all__ = ["HOST", "ROOT", "ProcessServer", "ThreadServer", "free_port", "shared_engine"]
