"""Engine replicas on Ray Serve (streamtts/cluster/): correctness with two replicas, cancel measured
at the replica, exact failover, and a typed error when no replica is left.

Every Ray process must bind and talk on loopback only, so the cases (tests/support/cluster_cases.py)
run in a child pytest inside a new network namespace that has only `lo` (``unshare --net``, as
root), with the cluster and its clients both in it; one cluster serves every case. Each case here
reports the child's verdict on it. Ray is the `cluster` extra; the base server never imports it.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASES_FILE = ROOT / "tests" / "support" / "cluster_cases.py"
CASES = [node.name for node in ast.parse(CASES_FILE.read_text()).body
         if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]
RUN_S = 1200  # the whole child run: a cold cluster and every case (a generous bound, not a timing)


@pytest.fixture(scope="module")
def child_run():
    missing = [tool for tool in ("unshare", "ip") if shutil.which(tool) is None]
    assert not missing, f"missing tools (make installs them): {missing}"
    assert os.geteuid() == 0, "the cluster tests make a network namespace: they need root"
    import importlib.util

    assert importlib.util.find_spec("ray") is not None, "Ray is missing: pip install -e '.[cluster]'"
    work = Path(tempfile.mkdtemp(prefix="streamtts-cluster-test-"))
    junit, figures = work / "junit.xml", work / "figures.jsonl"
    inner = (f"ip link set lo up && exec {sys.executable} -m pytest -q -p no:cacheprovider -s "
             f"{CASES_FILE} --junitxml={junit}")
    env = dict(os.environ, STREAMTTS_NETNS="1", STREAMTTS_CLUSTER_REPORT=str(figures))
    proc = subprocess.run(["unshare", "--net", "--", "sh", "-c", inner], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=RUN_S)
    assert junit.exists(), f"the child run wrote no report (exit {proc.returncode}):\n{proc.stdout[-6000:]}\n" \
                           f"{proc.stderr[-3000:]}"
    verdicts = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        skipped = case.find("skipped")
        verdicts[case.get("name")] = (failure.get("message", "") + "\n" + (failure.text or "")[-3000:]
                                      if failure is not None else "skipped" if skipped is not None else None)
    out = figures.read_text() if figures.exists() else ""
    print(out)
    yield verdicts, proc, [json.loads(line) for line in out.splitlines() if line.strip()]
    shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("case", CASES)
def test_cluster_case(child_run, case):
    verdicts, proc, _ = child_run
    assert case in verdicts, f"{case} did not run (exit {proc.returncode}):\n{proc.stdout[-4000:]}"
    assert verdicts[case] is None, f"{case}: {verdicts[case]}"


def test_server_imports_without_ray():
    code = ("import streamtts.server, streamtts.server.app, streamtts.cli, sys; "
            "bad=[m for m in sys.modules if m == 'ray' or m.startswith('ray.')]; print(bad); "
            "sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"the base server imported Ray: {proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("path", ["examples/serve-cluster.yaml", "examples/kuberay-rayservice.yaml"])
def test_serve_configs_validate_against_serves_schema(path):
    """The Serve config and the RayService's serveConfigV2 parse as Ray Serve's own deploy schema,
    and their args build the application (the RayService resource itself is not validated here)."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    doc = yaml.safe_load((ROOT / path).read_text())
    if doc.get("kind") == "RayService":
        doc = yaml.safe_load(doc["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(doc) if hasattr(ServeDeploySchema, "model_validate") \
        else ServeDeploySchema.parse_obj(doc)
    [app] = schema.applications
    assert app.import_path == "streamtts.cluster.replica:build_app"
    from streamtts.cluster.replica import build_app

    built = build_app(app.args)
    assert built is not None


def test_front_end_builds_its_word_segmenter_before_it_serves():
    """The cluster front end cuts chunks itself: the segmenter an early first cut needs is built at
    start-up (off its event loop), not by the first LLM-style utterance, which would otherwise
    stall every session of the front end while jieba loads."""
    from streamtts.cluster.client import ClusterEngineClient
    from streamtts.server.config import ServerConfig
    from streamtts.text.lexicon import Lexicon

    lexicon = Lexicon({"流式合成器": "liu2 shi4 he2 cheng2 qi4"})  # its own segmenter, built once
    client = ClusterEngineClient(ServerConfig(static_dir=None), lexicon=lexicon)
    assert lexicon._tokenizer is None
    client.warm_up()
    assert lexicon._tokenizer is not None
    assert lexicon.cut("我们的流式合成器很快") == ["我们", "的", "流式合成器", "很快"]


class _DictKV:
    """A key-value store in a dict, standing in for the cluster's (the policy below is pure)."""

    def __init__(self):
        self.data: dict[bytes, bytes] = {}

    def put(self, key, value):
        self.data[key] = value

    def keys(self, prefix):
        return [k for k in self.data if k.startswith(prefix)]

    def get(self, key):
        return self.data.get(key)

    def delete(self, key):
        self.data.pop(key, None)


def test_front_ends_take_each_others_streams_off_their_share_until_one_goes_quiet():
    from streamtts.cluster.fronts import GONE_S, STALE_S, FrontEnds, share

    kv, now = _DictKV(), [0.0]
    a, b = (FrontEnds(name, kv=kv, clock=lambda: now[0]) for name in ("a", "b"))
    assert a.exchange(3) == 0  # b has not spoken yet
    assert b.exchange(2) == 3
    assert a.exchange(3) == 2
    assert share(10, b.exchange(2)) == 7
    assert share(4, 6) == 0
    # a crashes: its record stops changing; b counts it until it is stale, deletes it much later
    now[0] += STALE_S / 2
    assert b.exchange(2) == 3
    now[0] += STALE_S
    assert b.exchange(2) == 0 and a.key in kv.data
    now[0] += GONE_S
    assert b.exchange(2) == 0 and a.key not in kv.data
    # a front end that leaves takes its key with it at once
    c = FrontEnds("c", kv=kv, clock=lambda: now[0])
    assert c.exchange(1) == 2 and b.exchange(2) == 1
    c.leave()
    assert b.exchange(2) == 0
    kv.put(b"front:junk", b"not json")  # another program's key under the prefix: ignored
    assert b.exchange(2) == 0
