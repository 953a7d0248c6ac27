"""The λ search behind `tune`: optuna proposes candidates, successive halving stops the weak ones early.

A candidate is a point of the search space (one global λ; one λ per group of tensors; a
λ gradient over layer bands), on a grid of the given step, so the search and a full grid
of the same resolution are comparable. Candidates are asked for in batches (merged in
one pass where the executor can), scored on the first rung of dev items, and only the
ones the pruner promotes are scored on the next rungs; a candidate that reaches the last
rung has been scored on every dev item, and its objective there is its trial's value.

The study lives in an optuna storage (a SQLite file in the output folder, or any
database URL), so an interrupted search resumes and several processes share one
study: a trial whose process died (its heartbeat stopped, or its pid is gone on this
host) is failed and its point queued again, and a point already scored (or being
scored elsewhere) is never scored twice: its values are copied.

The scorer is injected (`Scorer`): tune's scores merged models with lm-eval; tests and
`benchmarks/tune_cost.py` give simulated ones with a known optimum.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Protocol, Sequence

from mergekit_reasoning.core.errors import BenchError

# Tensor groups of the per-group space, as mergekit `filter`s (substrings of tensor names; the first
# that matches wins, so norms come first: OLMo-2's self_attn.q_norm is a norm). The last entry has no
# filter: the embeddings, the head and anything the others miss.
GROUPS = (("norms", "norm"), ("attention", "self_attn"), ("mlp", "mlp"), ("embeddings_head", None))
SPACES = ("global", "groups", "gradient")
SAMPLERS = ("tpe", "grid", "random")
PRUNERS = ("sha", "wilcoxon", "hyperband", "none")

Outcomes = Dict[str, Dict[str, Dict[object, float]]]  # task -> stratum -> item id -> value


@dataclass(frozen=True)
class Space:
    """The search space: which λ parameters there are, their bounds and grid step."""

    kind: str = "global"
    low: float = -1.0
    high: float = 2.0
    step: float = 0.25
    bands: int = 3  # gradient: values over the layers, interpolated by mergekit

    def __post_init__(self):
        if self.kind not in SPACES:
            raise BenchError(f"unknown search space {self.kind!r}; use one of {', '.join(SPACES)}")
        if not (self.high > self.low) or self.step <= 0:
            raise BenchError(
                f"λ bounds must satisfy low < high and step > 0, got [{self.low}, {self.high}] step {self.step}"
            )
        if abs(self.points() - 1 - (self.high - self.low) / self.step) > 1e-9:
            raise BenchError(f"the λ step {self.step:g} must divide the range [{self.low:g}, {self.high:g}]")
        if self.kind == "gradient" and self.bands < 2:
            raise BenchError(f"a λ gradient needs at least 2 bands, got {self.bands}")

    @property
    def names(self) -> tuple:
        if self.kind == "global":
            return ("lambda",)
        if self.kind == "groups":
            return tuple(name for name, _ in GROUPS)
        return tuple(f"band_{i}" for i in range(self.bands))

    def points(self) -> int:
        return int(round((self.high - self.low) / self.step)) + 1

    def values(self) -> List[float]:
        """The grid of one parameter (rounded, so 0.1·3 reads 0.3)."""
        return [round(self.low + i * self.step, 10) for i in range(self.points())]

    def grid_size(self) -> int:
        return self.points() ** len(self.names)

    def distributions(self) -> dict:
        from optuna.distributions import FloatDistribution

        return {name: FloatDistribution(self.low, self.high, step=self.step) for name in self.names}

    def normal(self, params: dict) -> tuple:
        """A point as a tuple of grid values (duplicates compare equal)."""
        return tuple(round(float(params[name]), 10) for name in self.names)

    def zero(self) -> dict:
        return {name: 0.0 for name in self.names}

    def setting(self, params: dict):
        """The recipe's `lambda` for a point: a number, mergekit filters, or a gradient list."""
        point = dict(zip(self.names, self.normal(params)))
        if self.kind == "global":
            return point["lambda"]
        if self.kind == "groups":
            return [{"filter": filt, "value": point[name]} if filt else {"value": point[name]} for name, filt in GROUPS]
        return [point[name] for name in self.names]

    def label(self, params: dict) -> str:
        """A point's name in tables and folder names, e.g. `lambda=0.5`, `attention=1,mlp=0.5,...`."""
        point = self.normal(params)
        if self.kind == "global":
            return f"lambda={point[0]:g}"
        if self.kind == "gradient":
            return "bands=" + "_".join(f"{v:g}" for v in point)
        return ",".join(f"{name}={v:g}" for name, v in zip(self.names, point))


def parse_objective(text: str) -> Dict[str, float]:
    """`gsm8k_cot=1,bbh=0.5` -> {task: weight}; a bare task name weighs 1; aliases expand."""
    from mergekit_reasoning.bench import registry

    weights: Dict[str, float] = {}
    for part in str(text).split(","):
        if not part.strip():
            continue
        name, sep, weight = part.partition("=")
        try:
            value = float(weight) if sep else 1.0
        except ValueError:
            raise BenchError(f"--objective expects task=weight pairs, got {part.strip()!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise BenchError(f"--objective weight of {name.strip()} must be a positive number, got {weight!r}")
        for task in registry.expand(name):
            weights[task] = weights.get(task, 0.0) + value
    if not weights:
        raise BenchError("--objective names no task")
    return weights


def task_score(task: str, strata: Dict[str, Dict[object, float]], aggregate=None) -> float:
    """A task's score from its items: the mean, or for a group `aggregate(means, sizes)` of its strata."""
    kept = {k: v for k, v in strata.items() if v}
    if not kept:
        return float("nan")
    if aggregate is None:
        values = [x for per in kept.values() for x in per.values()]
        return sum(values) / len(values)
    return float(aggregate([sum(v.values()) / len(v) for v in kept.values()], [len(v) for v in kept.values()]))


@dataclass(frozen=True)
class Objective:
    """Σ weight · task score; `aggregates` gives a group task its rule (lm-eval's), others take the mean."""

    weights: Dict[str, float]
    aggregates: Dict[str, Callable] = None

    def __call__(self, outcomes: Outcomes) -> float:
        total = 0.0
        for task, weight in self.weights.items():
            total += weight * task_score(task, outcomes.get(task, {}), (self.aggregates or {}).get(task))
        return total

    def describe(self) -> str:
        return " + ".join(f"{w:g}·{t}" for t, w in self.weights.items())

    def item_weights(self, task: str, sizes: Dict[str, int]) -> Dict[str, float]:
        """What one item of each stratum adds to the objective per unit of its value, given the
        strata's dev sizes: the objective is linear in the items, so a paired test on these
        per-item contributions compares candidates on the objective itself."""
        weight, rule = self.weights[task], (self.aggregates or {}).get(task)
        names = list(sizes)
        if rule is None:
            total = sum(sizes.values())
            return {name: weight / total for name in names}
        out = {}
        for name in names:
            unit = [1.0 if other == name else 0.0 for other in names]
            out[name] = weight * float(rule(unit, [sizes[n] for n in names])) / sizes[name]
        return out


@dataclass(frozen=True)
class Candidate:
    label: str
    params: Dict[str, float]
    setting: object  # the recipe's lambda


class Scorer(Protocol):
    """What the search needs from scoring: merge candidates, and score them on items."""

    def prepare(self, candidates: Sequence[Candidate]) -> None:
        """Make the candidates scoreable (merge them; together in one pass where possible)."""

    def score(self, candidates: Sequence[Candidate], rung: int) -> Dict[str, Outcomes]:
        """Per candidate label, the objective tasks' outcomes on the dev items new at `rung`."""

    def dev_sizes(self) -> Dict[str, Dict[str, int]]:
        """Dev items per task and stratum (the Wilcoxon pruner weighs items by them)."""


@dataclass(frozen=True)
class Schedule:
    """How the search spends its items: `rungs` rungs of dev items, each η times the one before;
    `batch` candidates asked together; `trials` in all (repeats included, failed ones not), then
    the polish. The defaults are those `benchmarks/tune_cost.py` measured: TPE after 4 random
    trials, 5 rungs of η = 2, optuna's Wilcoxon pruner at p = 0.1 (a candidate stops at a rung
    once it is worse than the best finished one, paired item by item), and a polish of ±2 steps:
    the grid's own pick in 98% of simulated seeds for 32% of a full grid's generations."""

    trials: int = 12
    batch: int = 4
    rungs: int = 5
    eta: int = 2
    pruner: str = "wilcoxon"
    sampler: str = "tpe"
    seed: int = 0
    p_prune: float = 0.1  # wilcoxon: prune a candidate worse than the best at this p-value
    polish: int = 2  # then score the unvisited grid points within this many steps of the best
    startup: int = 4  # tpe: random trials before it models the objective

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise BenchError(f"unknown sampler {self.sampler!r}; use one of {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise BenchError(f"unknown pruner {self.pruner!r}; use one of {', '.join(PRUNERS)}")
        if self.polish < 0:
            raise BenchError(f"--polish must be 0 or more, got {self.polish}")
        for name in ("trials", "batch", "rungs"):
            if getattr(self, name) < 1:
                raise BenchError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.eta < 2:
            raise BenchError(f"--eta must be at least 2, got {self.eta}")
        if not 0 < self.p_prune < 1:
            raise BenchError(f"--p-prune must be between 0 and 1, got {self.p_prune}")

    def make_pruner(self):
        import optuna

        if self.rungs == 1 or self.pruner == "none":
            return optuna.pruners.NopPruner()
        if self.pruner == "wilcoxon":
            # a paired test of each candidate's per-item contributions against the best trial's, at
            # each rung; one that is worse at p < p_prune stops there
            return optuna.pruners.WilcoxonPruner(p_threshold=self.p_prune, n_startup_steps=2)
        if self.pruner == "hyperband":
            return optuna.pruners.HyperbandPruner(
                min_resource=1, max_resource=self.eta ** (self.rungs - 1), reduction_factor=self.eta
            )
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=self.eta)

    def make_sampler(self, space: Space):
        import optuna

        if self.sampler == "grid":
            return _GridSampler({n: space.values() for n in space.names}, seed=self.seed)
        if self.sampler == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        # constant_liar: a batch's running trials count as poor ones, so a batch spreads out
        return optuna.samplers.TPESampler(
            seed=self.seed,
            constant_liar=True,
            multivariate=len(space.names) > 1,
            n_startup_trials=min(self.startup, self.trials),
        )


def _grid_sampler_class():
    import optuna

    class GridSampler(optuna.samplers.GridSampler):
        """optuna's grid sampler, less its `study.stop()` once every point is taken, which works
        inside `optimize` only; this search asks and tells, and stops by itself then."""

        def after_trial(self, study, trial, state, values) -> None:
            return None

    return GridSampler


def _GridSampler(search_space, seed):
    return _grid_sampler_class()(search_space, seed=seed)


HEARTBEAT_S = 10
GRACE_S = 60


def open_study(
    storage,
    name: str,
    space: Space,
    schedule: Schedule,
    settings: dict,
    *,
    heartbeat: int = HEARTBEAT_S,
    grace: int = GRACE_S,
):
    """Create or load the study; a stored one must have been started with the same `settings`.

    `storage`: None (in memory), an optuna storage, or a database URL (`sqlite:///OUT/study.db`).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats are optuna's "experimental" feature, and it warns that they are meant for
    # `optimize`: this search keeps them beating itself (_Heartbeat), with ask and tell.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used", category=UserWarning)
    if isinstance(storage, str):
        storage = _open_storage(storage, heartbeat, grace)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        sampler=schedule.make_sampler(space),
        pruner=schedule.make_pruner(),
        load_if_exists=True,
    )
    stored = study.user_attrs.get("settings")
    if stored is None:  # another process may be storing its own now: read back which one stands
        study.set_user_attr("settings", settings)
        stored = study.user_attrs.get("settings")
    if stored != settings:
        changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
        raise BenchError(
            f"the study {name!r} in this storage was started with other settings ({', '.join(changed)} differ: "
            f"{changed[0]} was {stored.get(changed[0])!r}, now {settings.get(changed[0])!r}); "
            "use another --out, --storage or --study-name"
        )
    return study


STORAGE_TRIES = 5


def _open_storage(url: str, heartbeat: int, grace: int):
    """optuna's RDBStorage for `url`. Processes that open a new database at the same moment race to
    create its tables and version rows; the losers fail ("table ... already exists", a duplicate key)
    and find them made when they try again."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    for attempt in range(1, STORAGE_TRIES + 1):
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=heartbeat,
                grace_period=grace,
                heartbeat_stale_trial_callback=_requeue,
            )
        except (IntegrityError, OperationalError) as exc:
            lost_race = isinstance(exc, IntegrityError) or "already exists" in str(exc)
            if not lost_race or attempt == STORAGE_TRIES:
                raise BenchError(_storage_error(url, exc)) from exc
            time.sleep(0.2 * attempt)
        except Exception as exc:  # an unreachable database, a malformed URL, a missing driver
            raise BenchError(_storage_error(url, exc)) from exc


def _storage_error(url: str, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"cannot open the study storage {url}: {type(exc).__name__}: {first}"


def _requeue(study, trial) -> None:
    """A trial that died (heartbeat stale, or its process gone): queue its point again. Only the
    process whose update failed the trial gets here (the storage makes that one update atomic)."""
    if trial.params:
        study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Tells this process from an earlier one that had its pid (a rerun as pid 1 in a container).
_PROCESS = uuid.uuid4().hex


def fail_stale(study) -> None:
    """Fail the running trials nobody is scoring any more, and queue their points again:
    by optuna's heartbeat, and at once for a trial of this host whose process is gone."""
    import optuna
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get("owner") or {}
        if owner.get("host") != host or owner.get("pid") is None:
            continue
        if owner["pid"] == os.getpid():  # this process's, or an earlier one's that had this pid (pid 1 in a container)
            alive = owner.get("process") == _PROCESS
        else:
            alive = _alive(owner["pid"])
        if alive:
            continue
        try:
            study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process got there first
        _requeue(study, trial)


class _Heartbeat:
    """Records a heartbeat for this process's running trials while they are scored."""

    def __init__(self, study, interval: float):
        self.study, self.interval = study, interval
        self.trial_ids: set = set()
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        storage = self.study._storage
        if hasattr(storage, "record_heartbeat") and getattr(storage, "get_heartbeat_interval", lambda: None)():
            self._thread = threading.Thread(target=self._beat, daemon=True, name="tune-heartbeat")
            self._thread.start()
        return self

    def _beat(self):
        while not self._stop.wait(self.interval):
            for trial_id in list(self.trial_ids):
                try:
                    self.study._storage.record_heartbeat(trial_id)
                except Exception:  # noqa: BLE001 - a missed beat only risks a retry elsewhere
                    pass

    def add(self, trial):
        self.trial_ids.add(trial._trial_id)
        storage = self.study._storage
        if self._thread is not None:
            storage.record_heartbeat(trial._trial_id)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _finished_like(study, space: Space, point: tuple, exclude: set):
    """The first trial of the same point outside `exclude` (this batch): a finished one to copy,
    or a running one (another process's) to wait for."""
    from optuna.trial import TrialState

    running = None
    for t in study.get_trials(deepcopy=False):
        if t.number in exclude or not t.params or space.normal(t.params) != point:
            continue
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            return t
        if t.state == TrialState.RUNNING and running is None:
            running = t
    return running


def _copy(study, trial, original) -> None:
    from optuna.trial import TrialState

    for step, value in sorted(original.intermediate_values.items()):
        trial.report(value, step)
    trial.set_user_attr("rung_values", original.user_attrs.get("rung_values", []))
    trial.set_user_attr("duplicate_of", original.number)
    trial.set_user_attr("generations", 0)
    if original.state == TrialState.COMPLETE:
        study.tell(trial, original.value)
    else:
        study.tell(trial, state=TrialState.PRUNED)


def _held(trials) -> list:
    """The trials that count against the target and hold their point: finished, or being scored
    (not failed, not queued)."""
    from optuna.trial import TrialState

    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)]


def run(
    study,
    space: Space,
    schedule: Schedule,
    objective: Objective,
    scorer: Scorer,
    *,
    heartbeat: float = HEARTBEAT_S,
    poll: float = 1.0,
) -> None:
    """Ask, merge, score rung by rung, prune and tell, batch after batch, until the study holds
    `schedule.trials` trials (this process's and any other's) or every grid point has been tried,
    and no trial is still queued or running elsewhere; then polish: score every grid point within
    `schedule.polish` steps of the best along each axis that no trial has tried yet, until the
    best's neighbourhood is done."""
    with _Heartbeat(study, heartbeat) as beats:
        _loop(study, space, schedule, objective, scorer, beats, poll, schedule.trials)
        while schedule.polish:
            todo = _unvisited_neighbours(study, space, schedule.polish)
            if not todo:
                break
            for params in todo:
                study.enqueue_trial(params, user_attrs={"polish": True})
            _loop(
                study,
                space,
                schedule,
                objective,
                scorer,
                beats,
                poll,
                len(_held(study.get_trials(deepcopy=False))) + len(todo),
            )


def _unvisited_neighbours(study, space: Space, steps: int) -> List[dict]:
    """Grid points within `steps` of the best trial along one axis, that no trial holds (or waits with)."""
    from optuna.trial import TrialState

    try:
        best = space.normal(best_trial(study, space).params)
    except BenchError:
        return []
    taken = {
        space.normal(t.params) for t in study.get_trials(deepcopy=False) if t.params and t.state != TrialState.FAIL
    }
    taken |= {
        space.normal(t.params)
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if t.params and len(t.params) == len(space.names)
    }
    out = []
    for axis in range(len(best)):
        for offset in range(-steps, steps + 1):
            value = round(best[axis] + offset * space.step, 10)
            point = tuple(value if i == axis else v for i, v in enumerate(best))
            if offset and space.low - 1e-9 <= value <= space.high + 1e-9 and point not in taken:
                taken.add(point)
                out.append(dict(zip(space.names, point)))
    return out


def _loop(study, space, schedule, objective, scorer, beats, poll, target: int) -> None:
    from optuna.trial import TrialState

    while True:
        fail_stale(study)
        # Queued points (another process's polish, a dead trial's retry, a run interrupted after
        # queueing) are scored by whichever process asks first, past the target if need be.
        trials = study.get_trials(deepcopy=False)  # one read of the storage per pass
        held = _held(trials)
        queued = sum(t.state == TrialState.WAITING for t in trials)
        room = max(target - len(held), queued)
        grid_done = not queued and len({space.normal(t.params) for t in held if t.params}) >= space.grid_size()
        if room <= 0 or grid_done:
            if not any(t.state == TrialState.RUNNING for t in held):
                return
            # Another process's trials still run: the study is not settled until they finish (or die
            # and are queued again), and a winner picked now could differ from the one it reports.
            time.sleep(poll)
            continue
        batch = []
        for _ in range(min(schedule.batch, room)):
            trial = study.ask(space.distributions())
            trial.set_user_attr("owner", {"host": socket.gethostname(), "pid": os.getpid(), "process": _PROCESS})
            beats.add(trial)
            batch.append(trial)
        fresh, copies = [], []
        seen: Dict[tuple, object] = {}
        for trial in batch:
            point = space.normal(trial.params)
            if point in seen:
                copies.append((trial, seen[point].number))
                continue
            other = _finished_like(study, space, point, {t.number for t in batch})
            if other is not None:
                copies.append((trial, other.number))
                continue
            seen[point] = trial
            fresh.append(trial)
        _score_batch(study, space, schedule, objective, scorer, fresh)
        for trial, number in copies:
            while True:
                original = study.get_trials(deepcopy=False)[number]
                if original.state in (TrialState.COMPLETE, TrialState.PRUNED):
                    _copy(study, trial, original)
                    break
                if original.state == TrialState.FAIL:  # its scorer died: score this one ourselves
                    _score_batch(study, space, schedule, objective, scorer, [trial])
                    break
                time.sleep(poll)
                fail_stale(study)


def _step(task: str, stratum: str, item) -> int:
    """A stable integer step for one item (optuna's steps are integers): a 48-bit hash of its name."""
    return int.from_bytes(hashlib.blake2b(f"{task}/{stratum}/{item}".encode(), digest_size=6).digest(), "big")


def _record(trial, candidate, new, outcomes, objective, schedule, rung, weights) -> None:
    """Add one rung's outcomes to a trial: its items, generations, objective so far, and the reports."""
    spent = trial.user_attrs.get("generations", 0)
    for task, strata in new[candidate.label].items():
        for stratum, values in strata.items():
            outcomes[trial.number].setdefault(task, {}).setdefault(stratum, {}).update(values)
            spent += len(values)
            if weights:  # the Wilcoxon pruner pairs trials item by item
                for item, value in values.items():
                    trial.report(weights[task][stratum] * value, step=_step(task, stratum, item))
    value = objective(outcomes[trial.number])
    trial.set_user_attr("generations", spent)
    trial.set_user_attr("rung_values", [*trial.user_attrs.get("rung_values", []), value])
    if not weights:
        trial.report(value, step=schedule.eta**rung)


def _finish(study, schedule, objective, scorer, trial, candidate, outcomes, rung, weights) -> None:
    """Score one trial on the rungs after `rung`, unpruned, and tell its value."""
    for later in range(rung + 1, schedule.rungs):
        _record(trial, candidate, scorer.score([candidate], later), outcomes, objective, schedule, later, weights)
    study.tell(trial, objective(outcomes[trial.number]))


def _score_batch(study, space: Space, schedule: Schedule, objective: Objective, scorer: Scorer, trials) -> None:
    from optuna.trial import TrialState

    if not trials:
        return
    candidates = {t.number: Candidate(space.label(t.params), dict(t.params), space.setting(t.params)) for t in trials}
    scorer.prepare(list(candidates.values()))
    per_item = schedule.pruner == "wilcoxon"
    weights = {}
    if per_item:
        sizes = scorer.dev_sizes()
        weights = {task: objective.item_weights(task, sizes[task]) for task in objective.weights}
    outcomes: Dict[int, Outcomes] = {t.number: {} for t in trials}
    alive = list(trials)
    for rung in range(schedule.rungs):
        new = scorer.score([candidates[t.number] for t in alive], rung)
        for trial in alive:
            _record(trial, candidates[trial.number], new, outcomes, objective, schedule, rung, weights)
        if rung == schedule.rungs - 1:
            break
        if per_item and not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            # The Wilcoxon pruner compares with the best finished trial, and there is none yet: take
            # this batch's leader through every rung first, so the others are judged against it.
            leader = max(alive, key=lambda t: t.user_attrs["rung_values"][-1])
            _finish(study, schedule, objective, scorer, leader, candidates[leader.number], outcomes, rung, weights)
            alive = [t for t in alive if t is not leader]
        survivors = []
        for trial in alive:
            if trial.should_prune():
                trial.set_user_attr("pruned_at_rung", rung)
                study.tell(trial, state=TrialState.PRUNED)
            else:
                survivors.append(trial)
        alive = survivors
        if not alive:
            return
    for trial in alive:
        study.tell(trial, objective(outcomes[trial.number]))


def best_trial(study, space: Space):
    """The best complete trial; ties go to the point nearest λ = 0 (the smallest change), then the earliest."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not done:
        raise BenchError("the search finished no trial on every dev item; raise --trials or lower --eta")
    return min(done, key=lambda t: (-t.value, sum(v * v for v in space.normal(t.params)), t.number))


def generations(study) -> int:
    """Items the study's finished trials were scored on (a duplicate costs none; a trial that
    died and was retried counts once, by its retry)."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED)
    return sum(int(t.user_attrs.get("generations", 0)) for t in study.get_trials(deepcopy=False, states=states))


def trial_records(study, space: Space) -> List[dict]:
    """Every trial as trials.json records it."""
    out = []
    for t in study.get_trials(deepcopy=False):
        out.append(
            {
                "number": t.number,
                "state": t.state.name,
                "params": dict(t.params),
                "label": space.label(t.params) if t.params else None,
                "lambda": space.setting(t.params) if t.params else None,
                "value": t.value,
                "rung_values": t.user_attrs.get("rung_values", []),
                "generations": t.user_attrs.get("generations", 0),
                **{
                    k: t.user_attrs[k]
                    for k in ("duplicate_of", "retry_of", "pruned_at_rung", "owner")
                    if k in t.user_attrs
                },
                "started": t.datetime_start.isoformat() if t.datetime_start else None,
                "finished": t.datetime_complete.isoformat() if t.datetime_complete else None,
            }
        )
    return out


def grid_generations(space: Space, dev_items: int) -> int:
    """What a full grid of the same resolution costs: every point on every dev item."""
    return space.grid_size() * dev_items


def distinct_points(trials: Iterable) -> int:
    return len({tuple(sorted(t.params.items())) for t in trials if t.params})
