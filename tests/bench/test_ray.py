"""`--ray`: units scored as Ray tasks on a two-node cluster on this machine (ray.cluster_utils.Cluster).

Marked `cluster`: the suite leaves them out (about 4 minutes of a 2-core machine, one cluster
at a time); `python -m pytest -q -n 0 -m cluster` runs them, as CI does after the suite.
The tests of one pytest worker share one cluster, in file order (the node whose mount namespace
hides a folder joins last); a lock keeps a second worker's cluster from running beside it (xdist's
loadgroup cannot: under pytest 9 it no longer renames the tests it groups).
"""

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
ray = pytest.importorskip("ray")

OPTIONS = dict(data_dir=None, limit=2, batch_size=4, progress=False, plots=False, log_samples=True)
UNIT_DIR = "mergekit-reasoning-unit-"  # cluster.score_unit_here's node-local folder


@pytest.fixture(scope="module")
def cluster():
    """Two nodes of one CPU each, told apart by a resource of their own; Ray's files in a short
    temporary folder (its socket paths must stay short), removed afterwards."""
    from ray.cluster_utils import Cluster

    lock = open(Path(tempfile.gettempdir()) / "mergekit-reasoning-tests-ray.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # one cluster at a time on this machine, across pytest workers
    temp = tempfile.mkdtemp(prefix="mkr-ray-", dir="/tmp")
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp
    node = dict(num_cpus=1, object_store_memory=80 << 20, include_dashboard=False)
    made = Cluster(initialize_head=True, head_node_args={**node, "resources": {"node_a": 1}})
    made.add_node(**node, resources={"node_b": 1})
    ray.init(address=made.address, include_dashboard=False, log_to_driver=False)
    yield made
    ray.shutdown()
    made.shutdown()
    if old is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = old
    shutil.rmtree(temp, ignore_errors=True)
    lock.close()


@pytest.fixture(scope="module")
def data(fixture_data):
    return str(fixture_data)


@pytest.fixture(scope="module")
def tune_data(fixture_data, tmp_path_factory):
    from .test_tune import write_tune_data

    return write_tune_data(fixture_data, tmp_path_factory.mktemp("tune-data") / "data")


def _options(data, **more):
    return {**OPTIONS, "data_dir": data, **more}


def _nodes_of(out: Path) -> set:
    """The node ids (8 characters) each unit's log says it ran on."""
    return {re.search(r"on node \S+ \((\w{8}),", log.read_text())[1] for log in (out / "logs").glob("*.log")}


def _node_ids() -> set:
    return {n["NodeID"][:8] for n in ray.nodes() if n["Alive"]}


def _unit_children():
    """(pid, parent pid, job) of every scoring child a Ray task started on this machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in args if a]
        if "mergekit_reasoning.bench.worker" in args and UNIT_DIR in args[-1]:
            try:
                job = json.loads(Path(args[-1]).read_text())
            except (OSError, ValueError):
                job = {}
            found.append((int(entry.name), int(stat.rsplit(")", 1)[1].split()[1]), job))
    return found


def _gone(pid: int, within: float = 20.0) -> bool:
    deadline = time.time() + within
    while time.time() < deadline:
        if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.cluster
def test_sweep_and_bench_on_two_nodes_score_as_locally_and_resume(cluster, trio, data, tmp_path, monkeypatch):
    from mergekit_reasoning.bench import run_bench, run_sweep, runner

    pair = (trio["target"], trio["sft"], trio["grpo"])
    local = run_sweep(*pair, [0.5, 1.0], "sciq", tmp_path / "local", **_options(data))
    on_ray = run_sweep(*pair, [0.5, 1.0], "sciq", tmp_path / "ray", ray=cluster.address, **_options(data))

    # Each λ merged and scored on a node of its own; the same table and per-item outputs as locally,
    # under the same cache keys (a node merge is the local merge, bit for bit).
    assert _nodes_of(tmp_path / "ray") == _node_ids() and len(_node_ids()) == 2
    assert not (tmp_path / "ray" / "merges").exists()  # merged on the nodes, removed there
    assert (tmp_path / "ray" / "table.md").read_text() == (tmp_path / "local" / "table.md").read_text()
    assert on_ray["items"] == local["items"] and on_ray["scores"] == local["scores"]
    assert on_ray["samples"] == local["samples"] and on_ray["comparisons"] == local["comparisons"]
    assert {label: m["sha256"] for label, m in on_ray["models"].items()} == {
        label: m["sha256"] for label, m in local["models"].items()
    }
    assert sorted(p.name for p in (tmp_path / "ray" / "cache").glob("*.json")) == sorted(
        p.name for p in (tmp_path / "local" / "cache").glob("*.json")
    )
    assert not list(Path(tempfile.gettempdir()).glob(f"{UNIT_DIR}*"))  # no node-local leftovers

    # A rerun on the cluster resumes from the driver's cache: nothing is merged or scored again.
    calls = []
    monkeypatch.setattr(runner, "score_units", lambda *a, **k: calls.append(a))
    again = run_sweep(*pair, [0.5, 1.0], "sciq", tmp_path / "ray", ray=cluster.address, **_options(data))
    assert calls == [] and again["items"] == on_ray["items"]
    monkeypatch.undo()

    # bench of the two local merges (folders every node sees): the table and per-item outputs of the
    # local sweep that scored them.
    local_merges = tmp_path / "local" / "merges"
    models = {label: str(local_merges / label) for label in ("lambda=0.5", "lambda=1")}
    benched = run_bench(models, "sciq", out_dir=tmp_path / "bench", ray=cluster.address, **_options(data))
    assert _nodes_of(tmp_path / "bench") == _node_ids()
    assert (tmp_path / "bench" / "table.md").read_text() == (tmp_path / "local" / "table.md").read_text()
    assert benched["items"] == local["items"] and benched["samples"] == local["samples"]


@pytest.mark.cluster
def test_a_killed_worker_is_retried_and_a_failing_unit_is_one_line(cluster, trio, data, tmp_path, monkeypatch):
    """The scoring child is killed (as by the OOM killer), then the Ray worker itself: Ray runs the
    unit a third time and it completes; a model that cannot load fails once, and one whose Ray worker
    is lost on every try fails after three, each in one line naming the unit, its node and its log;
    the other unit's scores are kept."""
    from mergekit_reasoning.bench import BenchError, run_bench, runner

    broken = tmp_path / "broken"
    shutil.copytree(trio["target"], broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    killed, lost, stop = [], [], threading.Event()

    def kill_workers():
        while not stop.is_set() and (len(killed) < 2 or len(lost) < 3):
            for pid, parent, job in _unit_children():
                if job.get("label") == "good" and len(killed) < 2 and pid not in {k[0] for k in killed}:
                    time.sleep(1.0)  # mid-unit: the child is importing lm-eval or loading the model
                    victim = pid if not killed else parent  # first the child, then the Ray worker
                    os.kill(victim, signal.SIGKILL)
                    killed.append((pid, parent))
                    break
                if job.get("label") == "lost" and parent not in lost:
                    os.kill(parent, signal.SIGKILL)  # the Ray worker, on every try
                    lost.append(parent)
                    break
            time.sleep(0.2)

    killer = threading.Thread(target=kill_workers, daemon=True)
    killer.start()
    try:
        with pytest.raises(BenchError) as failed:
            run_bench(
                {"good": str(trio["target"]), "bad": str(broken), "lost": str(trio["sft"])},
                "sciq",
                out_dir=tmp_path / "out",
                ray=cluster.address,
                **_options(data),
            )
    finally:
        stop.set()
        killer.join()
    message = str(failed.value)
    assert len(killed) == 2 and len(lost) == 3
    assert "\n" not in message and "'good'" not in message
    assert f"model 'bad' ({broken}) on node " in message and "cannot load model 'bad'" in message
    logs = tmp_path / "out" / "logs"
    assert f"[log: {logs}" in message and "finished scores are kept" in message
    lost_line = next(part for part in message.split("; ") if "'lost'" in part)
    assert re.search(r"Ray lost its worker 3 times, last on node \S+ \((\w{8}),", lost_line), lost_line
    lost_log = Path(re.search(r"\[log: ([^\]]+)\]", lost_line)[1])
    assert lost_log.parent == logs and "try 3 started on node" in lost_log.read_text()
    assert _gone(killed[1][0])  # the second try's child died with its Ray worker
    # the good model's units were saved: a rerun with it alone scores nothing
    monkeypatch.setattr(runner, "score_units", lambda *a, **k: pytest.fail("scored again"))
    done = run_bench({"good": str(trio["target"])}, "sciq", out_dir=tmp_path / "out", **_options(data))
    assert done["scores"] and not _unit_children()


def _as_in_a_terminal():
    """Ctrl-C's SIGINT handled as by a command in a terminal's foreground: a suite started in the
    background by a non-interactive shell (`pytest &`, CI scripts) has SIGINT ignored, and its
    children inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.cluster
def test_ctrl_c_on_the_driver_cancels_the_cluster_tasks(cluster, trio, data, tmp_path):
    driver = textwrap.dedent(
        f"""
        import sys
        from mergekit_reasoning.bench import run_bench
        run_bench({{"m": {str(trio["target"])!r}}}, "sciq", out_dir={str(tmp_path / "out")!r},
                  ray={cluster.address!r}, data_dir={data!r}, limit=2, batch_size=4, progress=False, plots=False)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", driver],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_as_in_a_terminal,
    )
    try:
        deadline = time.time() + 120
        while not _unit_children() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        children = _unit_children()
        assert children, proc.communicate()[0].decode()[-2000:]
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "KeyboardInterrupt" in output, (proc.returncode, output[-2000:])
    assert all(_gone(pid) for pid, _, _ in children), "a scoring child outlived Ray's cancelled task"
    assert not list((tmp_path / "out" / "cache").glob("*.json"))


@pytest.mark.cluster
def test_tune_on_the_cluster_picks_and_reports_as_locally(cluster, trio, tune_data, tmp_path):
    """Each candidate merged and scored on a node; the same trials, table and results as locally."""
    pytest.importorskip("optuna")
    from click.testing import CliRunner

    from mergekit_reasoning.cli import main

    from .test_tune import _recipe, _tune_args

    recipe = _recipe(tmp_path / "r", trio)
    few = ("--trials", "2", "--batch", "2", "--rungs", "1", "--objective", "sciq=1")
    local = CliRunner().invoke(main, _tune_args(recipe, tmp_path / "local", tune_data, *few))
    assert local.exit_code == 0, local.output
    on_ray = CliRunner().invoke(main, _tune_args(recipe, tmp_path / "ray", tune_data, *few, "--ray", cluster.address))
    assert on_ray.exit_code == 0, on_ray.output
    assert _nodes_of(tmp_path / "ray") == _node_ids()
    assert not (tmp_path / "ray" / "merges").exists()
    assert (tmp_path / "ray" / "table.md").read_text() == (tmp_path / "local" / "table.md").read_text()
    local_doc, ray_doc = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("local", "ray"))
    assert ray_doc["comparisons"] == local_doc["comparisons"] and ray_doc["items"] == local_doc["items"]


@pytest.mark.cluster
def test_reproduce_on_the_cluster_merges_plus_and_minus_on_the_nodes_and_reports_as_locally(
    cluster, trio, data, tmp_path
):
    """±v merged on the nodes that score them (removed there); the paper table, per-item outputs and
    comparisons of a local reproduce."""
    from mergekit_reasoning.bench.reproduce import reproduce

    from .test_reproduce import _recipe

    recipe = _recipe(tmp_path / "r", trio)
    options = dict(tasks="sciq", conditions="plain", paper_size="1.5B", donor=False, **_options(data, limit=1))
    local = reproduce(recipe, tmp_path / "local", **options)
    on_ray = reproduce(recipe, tmp_path / "ray", ray=cluster.address, **options)
    assert _nodes_of(tmp_path / "ray") == _node_ids()
    assert (tmp_path / "local" / "merges").is_dir() and not (tmp_path / "ray" / "merges").exists()
    assert (tmp_path / "ray" / "table.md").read_text() == (tmp_path / "local" / "table.md").read_text()
    assert on_ray["items"] == local["items"] and on_ray["samples"] == local["samples"]
    assert on_ray["comparisons"] == local["comparisons"] and on_ray["scores"] == local["scores"]
    assert {label: m["sha256"] for label, m in on_ray["models"].items()} == {
        label: m["sha256"] for label, m in local["models"].items()
    }


@pytest.mark.cluster
def test_a_folder_one_node_cannot_see_is_one_line_before_scoring(cluster, trio, data, tmp_path):
    """A third node joins in a mount namespace where the models' folder is an empty tmpfs: it cannot
    see the model the driver sees, as a node without the shared storage mounted would not."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("unshare (user and mount namespaces) is not available here")
    from mergekit_reasoning.bench import BenchError, run_bench

    shared = tmp_path / "shared"
    model = shared / "model"
    shutil.copytree(trio["target"], model)
    ray_bin = str(Path(sys.executable).parent / "ray")
    start = (
        f"mount -t tmpfs tmpfs {shared} && exec {ray_bin} start --address={cluster.address} --num-cpus=1 "
        "--resources='{\"node_c\": 1}' --object-store-memory=83886080 --block"
    )
    before = _node_ids()
    node = subprocess.Popen(
        ["unshare", "-rm", "sh", "-c", start],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 60
        while len(_node_ids()) == len(before) and time.time() < deadline:
            time.sleep(0.5)
        (hidden,) = _node_ids() - before
        with pytest.raises(BenchError) as failed:
            run_bench({"m": str(model)}, "sciq", out_dir=tmp_path / "out", ray=cluster.address, **_options(data))
        message = str(failed.value)
        assert "\n" not in message and f"({hidden}) cannot read {model} (no such folder)" in message
        assert not (tmp_path / "out" / "logs").exists()  # nothing was scored
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()


def test_without_ray_ray_is_never_imported(trio, data, tmp_path):
    program = textwrap.dedent(
        f"""
        import sys
        from mergekit_reasoning.bench import run_bench
        from mergekit_reasoning.cli import main
        run_bench({{"m": {str(trio["target"])!r}}}, "sciq", out_dir={str(tmp_path)!r}, data_dir={data!r},
                  limit=1, batch_size=4, progress=False, plots=False)
        assert "ray" not in sys.modules, "ray was imported"
        """
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_ray_options_reach_the_library(monkeypatch):
    from click.testing import CliRunner

    from mergekit_reasoning.bench import runner
    from mergekit_reasoning.cli import main

    seen = []
    monkeypatch.setattr(runner, "run_bench", lambda models, tasks, **k: seen.append(k) or None)
    for args, wanted in (
        (["--ray"], "local"),
        (["--ray", "auto"], "auto"),
        (["--ray", "10.0.0.1:6379"], "10.0.0.1:6379"),
    ):
        result = CliRunner().invoke(main, ["bench", "--model", "m=x/y", *args, "--keep-merges"])
        assert result.exit_code == 0, result.output
        assert seen.pop()["ray"] == wanted
    result = CliRunner().invoke(main, ["bench", "--model", "m=x/y", "--ray", "--limit", "2"])
    assert result.exit_code == 0 and seen.pop()["ray"] == "local"
    result = CliRunner().invoke(main, ["bench", "--model", "m=x/y", "--keep-merges"])
    assert result.exit_code != 0 and "--keep-merges is for --ray runs" in result.output
