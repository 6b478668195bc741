"""A local cluster for ``streamtts serve --replicas N``: a Ray head on loopback only (node address
127.0.0.1, no dashboard, no usage stats, its temp dir where asked) and the engine deployment::

    head = LocalHead(temp_dir="/tmp/rt", port=0, num_cpus=2).start()   # `ray start --head --block`
    deploy(head.address, {"replicas": 2, "engine": "onnx-int8", "vocoder": "melgan"})
    ...
    head.stop()        # SIGTERM to the head's process group (the processes it started), then SIGKILL

The head is a child process in its own session, stopped by its id: nothing else named ray is
touched.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from streamtts.cluster import APP_NAME

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# Environment of every Ray process started here: no usage report, no dashboard agent metrics
# export, loopback only.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int, exclude=()) -> list[int]:
    """``n`` distinct TCP ports free on loopback now (held open together while chosen, so the
    kernel cannot hand one out twice), none of them in ``exclude``."""
    held, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            held.append(s)
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
            if port not in exclude:
                ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


class LocalHead:
    def __init__(self, temp_dir: Optional[str] = None, port: int = 0, num_cpus: Optional[int] = None):
        # Ray's socket paths must stay short (AF_UNIX): a short directory under /tmp by default
        self.own_temp = temp_dir is None  # made here: removed at stop
        self.temp_dir = temp_dir or tempfile.mkdtemp(prefix="streamtts-ray-", dir="/tmp")
        self.port = port or free_port()
        self.num_cpus = num_cpus
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = Path(self.temp_dir) / "head.log"

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self, timeout_s: float = 180.0) -> "LocalHead":
        Path(self.temp_dir).mkdir(parents=True, exist_ok=True)
        ray = str(Path(sys.executable).with_name("ray"))
        # every port chosen here, all distinct, on loopback; workers take theirs from a range
        # below the kernel's ephemeral ports
        client, node, objects, agent, metrics, runtime_env = free_ports(6, exclude={self.port})
        cmd = [ray, "start", "--head", "--block", f"--node-ip-address={LOOPBACK}", f"--port={self.port}",
               "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
               f"--ray-client-server-port={client}", f"--node-manager-port={node}",
               f"--object-manager-port={objects}", "--min-worker-port=20000", "--max-worker-port=29999",
               f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
               f"--runtime-env-agent-port={runtime_env}"]
        if self.num_cpus is not None:
            cmd.append(f"--num-cpus={self.num_cpus}")
        env = {**os.environ, **RAY_ENV}
        log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log_file.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=1.0):
                    break
            except OSError:
                time.sleep(0.2)
        else:
            self.stop()
            raise RuntimeError(f"the Ray head did not listen within {timeout_s:g} s: {self.log_tail()}")
        return self

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        # Ray starts some workers in sessions of their own (the Serve controller): every process
        # under the head now is ended by its id if it outlives the head
        try:
            import psutil

            descendants = psutil.Process(proc.pid).children(recursive=True)
        except Exception:  # psutil missing, or the head gone meanwhile
            descendants = []
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # `ray start --block` stops what it started
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:
            pass
        # workers it started live in its session: end any left behind
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for child in descendants:
            try:
                child.kill()
            except Exception:  # already gone
                pass
        if self.own_temp:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def connect(address: str) -> None:
    import ray

    if not ray.is_initialized():
        os.environ.update(RAY_ENV)
        ray.init(address=address, namespace="serve", logging_level=logging.WARNING, log_to_driver=False,
                 configure_logging=False)


def deploy(address: str, settings: dict, app_name: str = APP_NAME, timeout_s: float = 900.0) -> None:
    """Deploy (or update) the engine replicas on the cluster at ``address`` and wait until they serve."""
    from ray import serve

    from streamtts.cluster.replica import build_app

    connect(address)
    serve.start(proxy_location="Disabled")  # handles only: no HTTP proxy, nothing else listens
    serve.run(build_app(settings), name=app_name, route_prefix=None, blocking=False)
    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get(app_name)
        if status is not None and str(status.status).endswith("RUNNING"):
            return
        if status is not None and "FAIL" in str(status.status):
            raise RuntimeError(f"the engine deployment failed: {status.message} {status.deployments}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the engine deployment was not running after {timeout_s:g} s: {status}")
        time.sleep(0.5)
