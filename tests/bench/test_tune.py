"""`tune RECIPE`: λ searched on dev items, the winner judged on held-out test items.

The splits on the fixture data (and larger generated copies); the search with an injected
scorer whose optimum is known; and `tune` end to end on the tiny stand-ins with the real
harness on CPU: dev and test items disjoint, best.yml merged bit for bit by the stock
mergekit-yaml, a resume after a kill, two processes sharing one study.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from mergekit_reasoning.bench import data, search, splits
from mergekit_reasoning.cli import main
from mergekit_reasoning.core.errors import BenchError
from mergekit_reasoning.core.shipped import recipes_dir
from mergekit_reasoning.testing.standins import retarget

pytest.importorskip("lm_eval")
pytest.importorskip("optuna")

FAST = ["--batch-size", "4", "--max-gen-toks", "4", "--no-plots", "--polish", "0"]


@pytest.fixture(scope="module")
def tune_data(fixture_data, tmp_path_factory) -> Path:
    return write_tune_data(fixture_data, tmp_path_factory.mktemp("tune-data") / "data")


def write_tune_data(fixture_data: Path, root: Path) -> Path:
    """The fixture data with more rows: 24 SciQ questions (validation only), 25 GSM8K train questions,
    one of them the first of the CoT prompt's own examples, and 6 rows for BBH's navigate."""
    shutil.copytree(fixture_data, root)
    gases = ["oxygen", "helium", "neon", "argon", "nitrogen", "hydrogen", "xenon", "krypton"]
    rows = []
    for i in range(24):
        c = [gases[(i + k) % len(gases)] for k in range(4)]
        rows.append(
            {
                "question": f"Which gas is number {i}?",
                "distractor1": c[0],
                "distractor2": c[1],
                "distractor3": c[2],
                "correct_answer": c[3],
                "support": f"Item {i}: the gas is {c[3]}.",
            }
        )
    (root / "sciq" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train = [
        {
            "question": f"Tom has {a} apples and buys {b} more. How many?",
            "answer": f"{a} + {b} = {a + b}.\n#### {a + b}",
        }
        for a in range(1, 6)
        for b in range(1, 6)
    ]
    train[7]["question"] = (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
        "there will be 21 trees. How many trees did the grove workers plant today?"
    )
    (root / "gsm8k" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    nav = {"examples": [{"input": f"Navigate question {i}?", "target": "Yes" if i % 2 else "No"} for i in range(6)]}
    (root / "bbh" / "navigate.json").write_text(json.dumps(nav))
    return root


def _recipe(folder: Path, trio) -> Path:
    data_ = retarget(
        yaml.safe_load((recipes_dir() / "qwen1.5b_add.yml").read_text()),
        str(trio["target"]),
        {"grpo": str(trio["grpo"]), "sft": str(trio["sft"])},
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "qwen1.5b_add.yml"
    path.write_text(yaml.safe_dump(data_, sort_keys=False))
    return path


# -- the splits ------------------------------------------------------------------------------------


def test_dev_and_test_never_share_an_item_and_every_id_is_recorded(tune_data):
    split = splits.plan(["gsm8k_cot", "gsm8k_5shot", "sciq", "bbh"], ["humaneval"], str(tune_data), seed=3, dev_size=10)
    for task, task_split in split.items():
        for s in task_split.strata:
            assert not set(s.dev) & set(s.test), (task, s.key)
            assert len(set(s.dev)) == len(s.dev) and len(set(s.test)) == len(s.test)
    gsm = split["gsm8k_cot"].strata[0]
    assert all(i.startswith("train:") for i in gsm.dev) and len(gsm.dev) == 10
    assert gsm.test == ["test:0", "test:1"] and gsm.hold_out == gsm.dev
    assert split["gsm8k_5shot"].strata[0].dev == gsm.dev  # one GSM8K dev set for both protocols
    # The CoT prompt's own first example is never a dev item.
    assert "train:7" in gsm.excluded and "train:7" not in gsm.dev
    sciq = split["sciq"].strata[0]  # validation.jsonl only: a seeded half each
    assert len(sciq.test) == 12 and len(sciq.dev) == 10 and sciq.dev_source.startswith("seeded half of validation")
    assert {i.split(":")[0] for i in sciq.dev + sciq.test} == {"validation"}
    bbh = {s.key: s for s in split["bbh"].strata}
    assert len(bbh) == 27 and (len(bbh["bbh/navigate"].dev), len(bbh["bbh/navigate"].test)) == (3, 3)
    assert split["humaneval"].strata[0].dev == [] and split["humaneval"].strata[0].test == ["test:0", "test:1"]
    # The same seed draws the same split; another seed another one; the test set does not depend on --dev-size.
    again = splits.plan(["gsm8k_cot", "sciq"], [], str(tune_data), seed=3, dev_size=10)
    assert again["gsm8k_cot"] == split["gsm8k_cot"] and again["sciq"] == split["sciq"]
    other = splits.plan(["gsm8k_cot", "sciq"], [], str(tune_data), seed=4, dev_size=5)
    assert other["gsm8k_cot"].strata[0].dev != gsm.dev[:5]
    assert set(other["sciq"].strata[0].test) != set(sciq.test)
    assert splits.plan(["sciq"], [], str(tune_data), seed=3, dev_size=2)["sciq"].strata[0].test == sciq.test


def test_sciq_dev_comes_from_another_split_when_there_is_a_test_file(tune_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tune_data, root)
    shutil.copy(root / "sciq" / "validation.jsonl", root / "sciq" / "test.jsonl")
    sciq = splits.plan(["sciq"], [], str(root), seed=0, dev_size=None)["sciq"].strata[0]
    assert {i.split(":")[0] for i in sciq.dev} == {"validation"} and len(sciq.dev) == 24
    assert sciq.test == [f"test:{i}" for i in range(24)]


def test_served_dev_items_carry_their_ids_and_leave_the_few_shot_pool(tune_data):
    split = splits.plan(["gsm8k_5shot"], [], str(tune_data), seed=0, dev_size=6)
    spec = splits.serve_spec(split, "dev", rung=None)
    with data.serving(spec):
        ds = data.load("gsm8k", str(tune_data))
    dev = split["gsm8k_5shot"].strata[0].dev
    assert ds["test"]["mkr_id"] == dev
    served = set(ds["test"]["question"])
    assert len(ds["train"]) == 25 - 6 and not served & set(ds["train"]["question"])
    # Rungs are prefixes of the seeded dev order: rung k serves the items new at that rung.
    sizes = splits.rung_sizes(6, 2, 3)
    assert sizes == [2, 6]
    rows = [splits.serve_spec(split, "dev", rung=r, rungs=2, eta=3)["gsm8k"]["rows"] for r in range(2)]
    assert rows[0] == dev[:2] and rows[1] == dev[2:]
    with data.serving(splits.serve_spec(split, "test")):
        assert data.load("gsm8k", str(tune_data))["test"]["mkr_id"] == ["test:0", "test:1"]
    assert len(data.load("gsm8k", str(tune_data))["train"]) == 25  # outside `serving`: the files as published


def test_humaneval_cannot_be_searched_on(trio, fixture_data, tmp_path):
    recipe = _recipe(tmp_path / "r", trio)
    result = CliRunner().invoke(
        main,
        [
            "tune",
            str(recipe),
            "--objective",
            "humaneval=1",
            "--data-dir",
            str(fixture_data),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 1
    assert (
        "humaneval cannot be searched on: its 164 problems are too few to split into dev and test items"
        in result.output
    )
    assert "--report humaneval" in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--objective", "sciq=x"], "--objective expects task=weight pairs"),
        (["--objective", "sciq=0"], "weight of sciq must be a positive number"),
        (["--objective", "mmlu=1"], "unknown task 'mmlu'"),
        (["--step", "0.7"], "the λ step 0.7 must divide the range [-1, 2]"),
        (["--lambda-min", "2", "--lambda-max", "1"], "λ bounds must satisfy low < high"),
        (["--dev-size", "0"], "--dev-size must be at least 1"),
        (["--condition", "plain,think"], "tune scores under one condition"),
        (["--storage", "nosuchdb://x"], "cannot open the study storage nosuchdb://x"),
    ],
)
def test_bad_options_are_one_line(args, message, trio, fixture_data, tmp_path):
    recipe = _recipe(tmp_path / "r", trio)
    base = ["tune", str(recipe), "--objective", "sciq=1", "--data-dir", str(fixture_data), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(main, base + args)
    assert result.exit_code == 1, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output


# -- the search, with an injected scorer -----------------------------------------------------------


class Surface:
    """Simulated candidates: item i is right at λ with probability 0.3 + 0.5·exp(−((λ − λ*)/w)²)... per
    parameter, each outcome drawn from a seed of (item, λ) (with a per-item part shared across λ)."""

    def __init__(self, space, optimum, n_items, rungs, eta, seed=0, width=0.9):
        self.space, self.optimum, self.n, self.rungs, self.eta, self.seed, self.width = (
            space,
            optimum,
            n_items,
            rungs,
            eta,
            seed,
            width,
        )
        self.scored = 0

    def accuracy(self, point):
        return 0.25 + 0.55 * np.exp(-sum(((x - o) / self.width) ** 2 for x, o in zip(point, self.optimum)))

    def prepare(self, candidates):
        pass

    def dev_sizes(self):
        return {"gsm8k_cot": {"gsm8k_cot": self.n}}

    def score(self, candidates, rung, role="dev"):
        sizes = splits.rung_sizes(self.n, self.rungs, self.eta)
        items = range(0 if rung == 0 else sizes[rung - 1], sizes[rung])
        out = {}
        for c in candidates:
            point = self.space.normal(c.params)
            p = self.accuracy(point)
            code = [int(round(1000 * x)) + 10**6 for x in point]
            values = {}
            for i in items:
                shared = np.random.default_rng([self.seed, i]).random()
                own = np.random.default_rng([self.seed, i, *code]).random()
                values[i] = float(0.85 * shared + 0.15 * own < p)
            out[c.label] = {"gsm8k_cot": {"gsm8k_cot": values}}
            self.scored += len(values)
        return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_search_finds_a_known_optimum_and_spends_less_than_a_grid(seed):
    space = search.Space("global", -1.0, 2.0, 0.125)
    schedule = search.Schedule(seed=seed)  # the defaults tune uses
    scorer = Surface(space, (0.75,), 540, schedule.rungs, schedule.eta, seed=seed)
    study = search.open_study(None, "t", space, schedule, {})
    search.run(study, space, schedule, search.Objective({"gsm8k_cot": 1.0}), scorer)
    best = search.best_trial(study, space)
    assert abs(best.params["lambda"] - 0.75) <= 0.25
    assert search.generations(study) == scorer.scored < search.grid_generations(space, 540) / 2
    # The polish scored every grid point within two steps of the winner.
    tried = {t.params["lambda"] for t in study.trials}
    assert {best.params["lambda"] + k * 0.125 for k in (-2, -1, 1, 2)} <= tried


def test_the_search_finds_a_per_group_optimum():
    space = search.Space("groups", -1.0, 2.0, 0.5)
    schedule = search.Schedule(trials=60, batch=6, rungs=2, eta=3, pruner="sha", sampler="tpe", seed=0, polish=0)
    optimum = (0.0, 1.0, 1.5, 0.5)
    scorer = Surface(space, optimum, 300, schedule.rungs, schedule.eta, width=1.2)
    study = search.open_study(None, "g", space, schedule, {})
    search.run(study, space, schedule, search.Objective({"gsm8k_cot": 1.0}), scorer)
    best = space.normal(search.best_trial(study, space).params)
    assert sum(abs(b - o) for b, o in zip(best, optimum)) <= 2.0, best
    assert space.setting(dict(zip(space.names, best)))[0]["filter"] == "norm"


def test_a_point_already_scored_is_copied_not_scored_again():
    space = search.Space("global", 0.0, 1.0, 0.5)  # 3 points, 6 trials
    schedule = search.Schedule(trials=6, batch=2, rungs=2, eta=3, sampler="random", seed=0, polish=0)
    scorer = Surface(space, (0.5,), 30, 2, 3)
    study = search.open_study(None, "d", space, schedule, {})
    search.run(study, space, schedule, search.Objective({"gsm8k_cot": 1.0}), scorer)
    scored = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    assert len({t.params["lambda"] for t in scored}) == len(scored)  # every point scored once at most
    assert scorer.scored == search.generations(study)


def test_a_stored_study_refuses_other_settings(tmp_path):
    space = search.Space("global", 0.0, 1.0, 0.5)
    schedule = search.Schedule(trials=2, batch=1, rungs=1)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    search.open_study(url, "s", space, schedule, {"dev_size": 10})
    with pytest.raises(BenchError, match=r"started with other settings \(dev_size differ: dev_size was 10, now 20\)"):
        search.open_study(url, "s", space, schedule, {"dev_size": 20})


def _open_at_once(url, barrier, results):
    space = search.Space("global", 0.0, 1.0, 0.5)
    barrier.wait()
    try:
        search.open_study(url, "s", space, search.Schedule(trials=2, batch=1, rungs=1), {"dev_size": 10})
        results.put("ok")
    except BaseException as exc:
        results.put(f"{type(exc).__name__}: {exc}")


def test_processes_opening_one_new_storage_at_once_all_get_the_study(tmp_path):
    """Tune processes started together on one new database (a cluster's) race to create optuna's
    tables: before, most rounds left one with "table studies already exists" or a duplicate key."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'study{round_}.db'}"
        barrier, results = context.Barrier(4), context.Queue()
        processes = [context.Process(target=_open_at_once, args=(url, barrier, results)) for _ in range(4)]
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=120) for _ in processes]
        for process in processes:
            process.join()
        assert outcomes == ["ok"] * 4, outcomes


def _foreign_running_trial(study, space, params, owner):
    """A trial that another process holds, with `params`."""
    study.enqueue_trial(params)
    trial = study.ask(space.distributions())
    trial.set_user_attr("owner", owner)
    return trial


def test_a_process_reports_only_once_the_other_processes_trials_have_finished(tmp_path):
    """Two tune processes on one study each pick a winner: the one that ran out of points first
    used to pick it while the other's last trial still ran, and the two reported different winners
    (seen in CI: λ = 1 by one, λ = 0 by the other, tied on the dev objective)."""
    import threading

    from optuna.trial import TrialState

    space = search.Space("global", 0.0, 1.0, 0.5)  # 3 points
    schedule = search.Schedule(trials=3, batch=1, rungs=1, sampler="grid", seed=0, polish=0)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = search.open_study(url, "s", space, schedule, {})
    other = search.open_study(url, "s", space, schedule, {})  # another process's view
    held = other.ask(space.distributions())  # the grid's first point, held by the other process
    held.set_user_attr("owner", {"host": "elsewhere", "pid": 1, "process": "x"})

    def finish_once_all_are_asked():
        while len(other.get_trials(deepcopy=False)) < 3:
            time.sleep(0.05)
        time.sleep(1.0)
        other.tell(held, 100.0)  # the best of all: the other process's point wins

    finisher = threading.Thread(target=finish_once_all_are_asked)
    finisher.start()
    scorer = Surface(space, (-5.0,), 12, 1, 3)  # about 25% right at every point
    try:
        search.run(study, space, schedule, search.Objective({"gsm8k_cot": 1.0}), scorer, poll=0.1)
        states = [t.state for t in study.get_trials()]
    finally:
        finisher.join()
    assert states == [TrialState.COMPLETE] * 3
    assert "duplicate_of" not in str([t.user_attrs for t in study.get_trials()])  # three distinct points
    assert search.best_trial(study, space).number == held.number


def test_a_trial_left_running_by_an_earlier_process_with_this_pid_is_scored_again(tmp_path):
    """A rerun can get the pid of the run that died (pid 1 in a container): its trial is not ours."""
    from optuna.trial import TrialState

    space = search.Space("global", 0.0, 1.0, 0.5)
    schedule = search.Schedule(trials=3, batch=1, rungs=1, sampler="grid", seed=0, polish=0)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = search.open_study(url, "s", space, schedule, {})
    earlier = {"host": socket.gethostname(), "pid": os.getpid(), "process": "an earlier one"}
    dead = _foreign_running_trial(study, space, {"lambda": 0.5}, earlier)
    started = time.monotonic()
    search.run(study, space, schedule, search.Objective({"gsm8k_cot": 1.0}), Surface(space, (1.0,), 6, 1, 3))
    assert time.monotonic() - started < 30  # not after the 60 s heartbeat grace
    trials = study.get_trials()
    assert trials[dead.number].state == TrialState.FAIL
    retried = [t for t in trials if t.user_attrs.get("retry_of") == dead.number]
    assert [t.state for t in retried] == [TrialState.COMPLETE] and retried[0].params == {"lambda": 0.5}


def test_a_point_another_process_queued_is_scored_before_the_winner_is_picked(tmp_path):
    """Another process's polish queues points once the study holds its trials: this process
    used to stop at the trial count, and pick its winner without them."""
    from optuna.trial import TrialState

    space = search.Space("global", 0.0, 1.0, 0.5)
    schedule = search.Schedule(trials=1, batch=1, rungs=1, sampler="grid", seed=0, polish=0)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = search.open_study(url, "s", space, schedule, {})
    scorer = Surface(space, (1.0,), 12, 1, 3)
    search.run(study, space, schedule, search.Objective({"gsm8k_cot": 1.0}), scorer)
    first = study.get_trials()[0].params["lambda"]
    other = search.open_study(url, "s", space, schedule, {})
    queued = [{"lambda": v} for v in (0.0, 0.5, 1.0) if v != first]
    for params in queued:
        other.enqueue_trial(params, user_attrs={"polish": True})
    search.run(study, space, schedule, search.Objective({"gsm8k_cot": 1.0}), scorer)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert sorted(t.params["lambda"] for t in trials) == [0.0, 0.5, 1.0]


# -- tune end to end, real harness -----------------------------------------------------------------


def _tune_args(recipe, out, tune_data, *extra):
    return [
        "tune",
        str(recipe),
        "--out",
        str(out),
        "--data-dir",
        str(tune_data),
        "--objective",
        "sciq=1,gsm8k_cot=1",
        "--dev-size",
        "6",
        "--rungs",
        "2",
        "--step",
        "0.5",
        *FAST,
        *extra,
    ]


@pytest.fixture(scope="module")
def tuned(trio, tune_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    recipe = _recipe(root / "recipes", trio)
    out = root / "out"
    result = CliRunner().invoke(main, _tune_args(recipe, out, tune_data, "--trials", "3", "--batch", "3"))
    assert result.exit_code == 0, result.output
    return dict(out=out, output=result.output, recipe=recipe)


def test_tune_writes_the_winner_and_its_held_out_comparison(tuned):
    out = tuned["out"]
    for name in ("best.yml", "table.md", "results.json", "trials.json", "splits.json", "study.db"):
        assert (out / name).is_file(), name
    table = (out / "table.md").read_text()
    assert "## Held-out test (never searched on)" in table and "## Dev (searched on)" in table
    assert "| objective | 1·sciq + 1·gsm8k_cot |" in table and "| sciq | acc_norm (none) |" in table
    assert "| gsm8k_cot | exact_match (strict-match) |" in table
    assert "Generations:" in table and "a full grid of the same resolution" in table
    assert table in tuned["output"]
    doc = json.loads((out / "results.json").read_text())
    assert doc["search"]["grid_points"] == 7 and doc["search"]["trials"] == 3
    assert doc["settings"]["objective"] == {"sciq": 1.0, "gsm8k_cot": 1.0}
    test_rows = {r["task"]: r for r in doc["comparisons"]["test"]}
    assert test_rows["sciq"]["method"] == "exact McNemar" and test_rows["sciq"]["n"] == 12
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert len(trials) == 3 and all(t["state"] in ("COMPLETE", "PRUNED") for t in trials)
    assert all(t["rung_values"] for t in trials)


def test_dev_and_test_items_scored_are_disjoint_and_those_of_the_split(tuned):
    doc = json.loads((tuned["out"] / "results.json").read_text())
    recorded = json.loads((tuned["out"] / "splits.json").read_text())["tasks"]
    for task in ("sciq", "gsm8k_cot"):
        for model in ("base", "winner"):
            dev = set(doc["items"]["dev"][model][task][task]["ids"])
            test = set(doc["items"]["test"][model][task][task]["ids"])
            assert dev and test and not dev & test
            assert dev == set(recorded[task][0]["dev"]) and test == set(recorded[task][0]["test"])
    assert all(i.startswith("train:") for i in doc["items"]["dev"]["base"]["gsm8k_cot"]["gsm8k_cot"]["ids"])
    assert all(i.startswith("test:") for i in doc["items"]["test"]["base"]["gsm8k_cot"]["gsm8k_cot"]["ids"])


def _same_shards_as_stock(out: Path, tmp_path: Path) -> None:
    """Stock mergekit-yaml on OUT/best.yml writes the very shards of the model tune scored."""
    from mergekit_reasoning.testing.demo import stock_mergekit_yaml

    doc = json.loads((out / "results.json").read_text())
    best = yaml.safe_load((out / "best.yml").read_text())
    assert best["parameters"] == {"lambda": doc["winner"]["lambda"]}
    scored = out / "merges" / doc["winner"]["label"]
    if not any(doc["winner"]["params"].values()):  # λ = 0 is the target itself
        scored = Path(best["base_model"])
    result = subprocess.run(
        [*stock_mergekit_yaml(), str(out / "best.yml"), str(tmp_path / "stock"), "--quiet"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    shards = sorted(p.name for p in scored.glob("*.safetensors"))
    assert shards and shards == sorted(p.name for p in (tmp_path / "stock").glob("*.safetensors"))
    for name in shards:
        assert (
            hashlib.sha256((tmp_path / "stock" / name).read_bytes()).digest()
            == hashlib.sha256((scored / name).read_bytes()).digest()
        )


def _cli(args, **kw):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "mergekit_reasoning.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
        **kw,
    )


def _trials(out: Path, storage=None):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name="tune", storage=storage or f"sqlite:///{out / 'study.db'}").trials


def test_an_interrupted_tune_resumes_without_rescoring(trio, tune_data, tmp_path):
    recipe = _recipe(tmp_path / "r", trio)
    out = tmp_path / "out"
    args = _tune_args(recipe, out, tune_data, "--trials", "3", "--batch", "3", "--objective", "sciq=1")
    proc = _cli(args)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # until the first candidate's first rung is in
        if list((out / "cache").glob("*.json")):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its scoring child, mid-search
    proc.wait()
    kept = {p.name: p.read_bytes() for p in (out / "cache").glob("*.json")}
    assert [t.state.name for t in _trials(out)].count("RUNNING") == 3
    again = _cli(args)
    output = again.communicate(timeout=600)[0]
    assert again.returncode == 0, output[-3000:]
    trials = _trials(out)
    states = [t.state.name for t in trials]
    assert states.count("FAIL") == 3 and states.count("COMPLETE") + states.count("PRUNED") == 3
    retried = [t for t in trials if "retry_of" in t.user_attrs]
    assert sorted(t.user_attrs["retry_of"] for t in retried) == [0, 1, 2]
    assert {t.params["lambda"] for t in retried} == {t.params["lambda"] for t in trials[:3]}
    for name, content in kept.items():  # every score finished before the kill was reused, not redone
        assert (out / "cache" / name).read_bytes() == content
    assert (out / "table.md").is_file()


def test_two_processes_share_one_study_and_score_no_point_twice(trio, tune_data, tmp_path):
    recipe = _recipe(tmp_path / "r", trio)
    out = tmp_path / "out"
    storage = f"sqlite:///{tmp_path / 'shared' / 'study.db'}"  # a database URL, as on a cluster
    (tmp_path / "shared").mkdir()
    args = _tune_args(
        recipe,
        out,
        tune_data,
        "--trials",
        "4",
        "--batch",
        "1",
        "--step",
        "1",
        "--sampler",
        "grid",
        "--objective",
        "sciq=1",
        "--storage",
        storage,
    )
    first = _cli(args)
    time.sleep(1.0)
    second = _cli(args)
    outputs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, [o[-2000:] for o in outputs]
    trials = _trials(out, storage)
    assert not (out / "study.db").exists()
    scored = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED") and "duplicate_of" not in t.user_attrs]
    assert sorted(t.params["lambda"] for t in scored) == [-1.0, 0.0, 1.0, 2.0]  # the grid, each point once
    assert len({t.user_attrs["owner"]["pid"] for t in scored}) == 2  # both processes scored some of it
    assert len(trials) == 4
    tables = [o[o.index("# tune:") :] for o in outputs]
    assert tables[0].splitlines()[2] == tables[1].splitlines()[2]  # the same winner, reported by both
