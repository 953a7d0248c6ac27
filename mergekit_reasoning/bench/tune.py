"""`mergekit-reasoning tune RECIPE`: search λ on dev items, then judge the winner on held-out test items.

From a recipe of one GRPO/SFT pair it searches λ (one global value, one per group of
tensors, or a gradient over layer bands) on dev items that share nothing with the test
items (splits.py), with optuna and successive halving (search.py): candidates proposed
together are merged together by the executor's one entry point, each scored on a small
rung of dev items first and on more only when promising. The winner and the base (the
recipe's target, λ = 0) are then scored on the held-out test items, and table.md says,
with paired intervals, whether the winner beats the base there and by how much.

Outputs in OUT: best.yml (the winning recipe; stock `mergekit-yaml` merges it bit for
bit into the model that was scored), table.md, results.json (settings, split, every
Δ's statistics and the per-item outcomes), trials.json (every trial), splits.json
(every dev and test item id), plots/objective.png, study.db (the optuna study; resume
by running the same command, share by pointing several at one --storage), merges/ and
the unit cache. Cheap to import: optuna, mergekit and lm_eval load when it runs.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import math
import os
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from mergekit_reasoning.bench import paired, registry, search, splits
from mergekit_reasoning.bench.conditions import parse_conditions
from mergekit_reasoning.core.errors import BenchError, RecipeError

DEFAULT_OBJECTIVE = "gsm8k_cot=1"
BASE = "base"


def _aggregates(tasks) -> dict:
    """lm-eval's rule for each group task's headline metric (BBH: a mean weighted by subtask size)."""
    from mergekit_reasoning.bench.comparisons import _group_aggregate
    from mergekit_reasoning.bench.report import PRIMARY

    return {t: _group_aggregate(t, *PRIMARY[t]) for t in tasks if registry.group_subtask_names(t)}


class HarnessScorer:
    """Candidates merged by the executor and scored by lm-eval in scoring children, per split and rung.

    Every (model, task, items) is a unit of the run's cache, so a resumed or shared search
    never scores one twice; `spent` counts the items actually scored by this process.
    """

    def __init__(self, pair, space, split, run, condition, dev_tasks, test_tasks, rungs, eta, out: Path):
        self.pair, self.space, self.split, self.run, self.cond = pair, space, split, run, condition
        self.dev_tasks, self.test_tasks, self.rungs, self.eta = list(dev_tasks), list(test_tasks), rungs, eta
        self.out = Path(out)
        self.identities: Dict[str, dict] = {}
        self.spent = 0

    # -- merging -------------------------------------------------------------------------------

    def _is_base(self, candidate) -> bool:
        return all(v == 0 for v in self.space.normal(candidate.params))

    def folder(self, candidate):
        """The candidate's model: the target for λ = 0, bit for bit; else its merged folder, or
        on a Ray cluster the merge the node that scores it makes (cluster.NodeMerge)."""
        if self._is_base(candidate):
            return str(self.pair.target)
        if self.run.ray is not None:
            from mergekit_reasoning.bench.cluster import NodeMerge
            from mergekit_reasoning.executor.recipe import Recipe

            if self.space.kind == "global":
                return NodeMerge(self.pair.merge_recipe().text, float(candidate.setting), candidate.label)
            recipe = Recipe.from_data(self.recipe_data(candidate.setting), source=f"tune candidate {candidate.label}")
            return NodeMerge(recipe.text, None, candidate.label)
        return str(self.out / "merges" / candidate.label)

    def recipe_data(self, setting) -> dict:
        """The recipe with `lambda: setting`: what best.yml holds and what each candidate is merged from."""
        data = self.pair.merge_recipe().data
        return {**data, "parameters": {"lambda": setting}}

    def prepare(self, candidates) -> None:
        from mergekit_reasoning.bench.sweep import merge_lambdas
        from mergekit_reasoning.executor import manifest, run
        from mergekit_reasoning.executor.recipe import Recipe

        todo = [c for c in candidates if not self._is_base(c)]
        if self.run.ray is not None:  # each is merged on the node that scores it
            return
        if self.space.kind == "global":  # every λ of the batch in one pass over the inputs
            merge_lambdas(self.pair.merge_recipe(), [c.setting for c in todo], self.out / "merges")
            return
        for c in todo:  # a λ per group or band is a recipe of its own: one pass each
            recipe = Recipe.from_data(self.recipe_data(c.setting), source=f"tune candidate {c.label}")
            folder = Path(self.folder(c))
            done = manifest.completed(folder)
            if done is None or done.get("recipe_sha256") != hashlib.sha256(recipe.text.encode()).hexdigest():
                try:
                    run.merge(recipe, [folder], overwrite=True)
                except RecipeError as exc:
                    raise BenchError(f"merge of candidate {c.label} failed: {exc}") from exc

    # -- scoring -------------------------------------------------------------------------------

    def _identity(self, label: str, ref) -> dict:
        from mergekit_reasoning.bench.cluster import identity_of

        if label not in self.identities or str(self.identities[label].get("sha256")).startswith("pending:"):
            self.identities[label] = identity_of(ref, self.run.cache_dir)
        return self.identities[label]

    def dev_sizes(self) -> Dict[str, Dict[str, int]]:
        return {
            task: {
                (s.key.split("/", 1)[1] if task == "bbh" else task): len(s.dev)
                for s in self.split[task].strata
                if s.dev
            }
            for task in self.dev_tasks
        }

    @staticmethod
    def scoring_tasks(task: str) -> List[str]:
        """What lm-eval scores for a task: BBH's subtasks one by one (a rung may hold new items for
        some subtasks only, and lm-eval runs a group whole), aggregated afterwards by lm-eval's rule."""
        return [f"bbh_{sub}" for sub in registry.BBH_SUBTASKS] if task == "bbh" else [task]

    def score(self, candidates, rung: Optional[int], role: str = "dev") -> Dict[str, search.Outcomes]:
        from mergekit_reasoning.bench import data
        from mergekit_reasoning.bench.cluster import score_units
        from mergekit_reasoning.bench.report import PRIMARY
        from mergekit_reasoning.bench.results import item_values, load_unit, unit_key

        tasks = self.dev_tasks if role == "dev" else self.test_tasks
        serve = splits.serve_spec({t: self.split[t] for t in tasks}, role, rung, self.rungs, self.eta)
        models = {c.label: self.folder(c) for c in candidates}
        settings = self.run.settings

        def serve_of(scored: str) -> str:
            return data.serve_key(registry.dataset(scored), registry.bbh_subtask(scored))

        def key_of(label, cond, scored, variant="plain"):
            ident = self.identities[label]
            return unit_key(
                model=ident.get("sha256") or [ident.get("id"), ident.get("revision")],
                task=registry.lm_eval_name(scored, variant),
                condition=cond.name,
                serve=serve[serve_of(scored)],
                role=role,
                **{k: settings[k] for k in ("data_dir", "max_gen_toks", "task_config_hash")},
                scoring=self.run.scoring,
                sandbox=settings["sandbox"] if registry.dataset(scored) == "humaneval" else None,
            )

        for label, ref in models.items():
            self._identity(label, ref)
        # (label, condition, lm-eval task as a user task name, variant), for what has items at this rung
        units = [
            (label, self.cond, scored, "plain")
            for label in models
            for task in tasks
            for scored in self.scoring_tasks(task)
            if serve_of(scored) in serve
        ]
        todo: Dict[str, dict] = {}
        for unit in units:
            if load_unit(self.run.cache_dir, key_of(*unit)) is None:
                todo.setdefault(unit[0], {}).setdefault(unit[1], []).append(unit)
        if todo:
            score_units(
                models,
                todo,
                key_of,
                self.run.out,
                {**settings, "limit": None, "serve": serve},
                self.run.engine,
                self.run.progress,
                together=self.run.engine["engine"] == "hf",
                ray=self.run.ray,
                on_identity=self.identities.__setitem__,
                keep_merges=self.run.keep_merges,
            )
        fresh = {(u[0], u[2]) for per in todo.values() for us in per.values() for u in us}
        out: Dict[str, search.Outcomes] = {label: {t: {} for t in tasks} for label in models}
        for label, cond, scored, variant in units:
            unit = load_unit(self.run.cache_dir, key_of(label, cond, scored, variant))
            name = registry.lm_eval_name(scored)
            if unit is None or not (unit.get("items") or {}).get(name):
                raise BenchError(f"candidate {label}: no per-item outcomes for {scored} after scoring")
            values = item_values(unit["items"][name], ",".join(PRIMARY[scored]))
            sub = registry.bbh_subtask(scored)
            task = "bbh" if sub and "bbh" in tasks else scored
            out[label][task][sub if task == "bbh" else scored] = values
            if (label, scored) in fresh:
                self.spent += len(values)
        return out


def _lock(path: Path):
    """An exclusive lock on `path` (the final scoring and writing, when processes share OUT)."""

    @contextmanager
    def held():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    return held()


def _score_all_rungs(scorer, candidates, rungs: int) -> Dict[str, search.Outcomes]:
    """Candidates' outcomes on every dev item, rung by rung (the increments the search scored,
    so each item is prompted exactly as it was in the search)."""
    merged: Dict[str, search.Outcomes] = {c.label: {} for c in candidates}
    for rung in range(rungs):
        for label, outcomes in scorer.score(candidates, rung).items():
            for task, strata in outcomes.items():
                for stratum, values in strata.items():
                    merged[label].setdefault(task, {}).setdefault(stratum, {}).update(values)
    return merged


def _compare(task: str, base: dict, winner: dict, aggregates: dict, seed: int) -> paired.Paired:
    return paired.compare(task, base, winner, group=aggregates.get(task), names=(BASE, "winner"), seed=seed)


def _objective_delta(
    weights, base: search.Outcomes, winner: search.Outcomes, aggregates, seed
) -> Optional[paired.Paired]:
    """Δ of the weighted objective, paired: one bootstrap over every task's strata, the objective as aggregate."""
    tasks = [t for t in weights if base.get(t)]
    strata, owners = [], []
    for task in tasks:
        for name in base[task]:
            a, b = paired.align(f"{task} ({name})", base[task][name], winner[task].get(name, {}), (BASE, "winner"))
            strata.append((a, b))
            owners.append(task)
    if not strata:
        return None
    if len(tasks) == 1 and not aggregates.get(tasks[0]) and weights[tasks[0]] == 1:
        return _compare(tasks[0], base[tasks[0]], winner[tasks[0]], aggregates, seed)

    def aggregate(means, sizes):
        total = 0.0
        for task in tasks:
            idx = [i for i, o in enumerate(owners) if o == task]
            rule = aggregates.get(task) or paired.pooled_mean
            total = total + weights[task] * rule([means[i] for i in idx], [sizes[i] for i in idx])
        return total

    return paired.bootstrap(strata, aggregate, seed=seed)


def _score_of(task: str, strata: dict, aggregates: dict) -> float:
    return search.task_score(task, strata, aggregates.get(task))


def tune(
    recipe: Union[str, os.PathLike],
    out_dir: Union[str, os.PathLike] = "tune-out",
    *,
    objective: str = DEFAULT_OBJECTIVE,
    report: Union[str, Sequence[str], None] = None,
    space: str = "global",
    lambda_min: float = -1.0,
    lambda_max: float = 2.0,
    step: float = 0.25,
    bands: int = 3,
    trials: int = 12,
    batch: int = 4,
    dev_size: Optional[int] = 200,
    rungs: int = 5,
    eta: int = 2,
    pruner: str = "wilcoxon",
    sampler: str = "tpe",
    seed: int = 0,
    p_prune: float = 0.1,
    polish: int = 2,
    startup: int = 4,
    split_seed: int = 0,
    storage: Optional[str] = None,
    study_name: str = "tune",
    condition: str = "plain",
    data_dir: Optional[str] = None,
    limit: Optional[int] = None,
    plots: bool = True,
    progress: bool = True,
    scorer=None,
    heartbeat: int = search.HEARTBEAT_S,
    grace: int = search.GRACE_S,
    **scoring,
) -> dict:
    """Search λ for RECIPE on dev items and report the winner against the base on held-out test items.

    `objective`: `task=weight,...` of headline metrics (`report`: tasks scored on the test
    items only, e.g. humaneval). `space`: global, groups (attention, MLP, embeddings and
    head, norms) or gradient (`bands` values over the layers); λ on the grid
    [lambda_min, lambda_max] by `step`. `trials` candidates in all, `batch` at a time,
    `rungs` rungs of dev items (`dev_size` per task), each `eta` times the last, pruned by
    `pruner` (wilcoxon: worse than the best at p < `p_prune`, paired by item; sha: successive
    halving; hyperband; none); `sampler` tpe (`startup` random trials first), grid or random,
    seeded by `seed`; then the unvisited grid points within `polish` steps of the best.
    `split_seed` draws the dev/test split; `limit` caps the test items per task (a quick
    look). `storage`: a database URL for the study (default: OUT/study.db). Every other
    keyword is a scoring option of `run_bench` (engine, dtype, batch_size, device,
    max_gen_toks, allow_weak_sandbox, engine options). `scorer` replaces the harness (tests).
    """
    from mergekit_reasoning.bench.reproduce import read_pair_recipe
    from mergekit_reasoning.bench.runner import plan

    pair = read_pair_recipe(recipe, verb="tune")
    weights = search.parse_objective(objective)
    searched = list(weights)
    for task in searched:
        splits.check_searchable(task)
    reported = [t for t in (registry.expand(report) if report else []) if t not in searched]
    the_space = search.Space(space, float(lambda_min), float(lambda_max), float(step), int(bands))
    schedule = search.Schedule(trials, batch, rungs, eta, pruner, sampler, seed, p_prune, polish, startup)
    if dev_size is not None and dev_size < 1:
        raise BenchError(f"--dev-size must be at least 1, got {dev_size}")
    conds = parse_conditions(condition)
    if len(conds) != 1:
        raise BenchError(f"tune scores under one condition, got {condition!r}")
    out = Path(out_dir)
    run = plan(
        {BASE: pair.target},
        [*searched, *reported],
        conds,
        out,
        data_dir=data_dir,
        limit=None,
        baseline=None,
        adversarial=False,
        adversarial_seed=0,
        engine=scoring.pop("engine", "hf"),
        dtype=scoring.pop("dtype", "auto"),
        batch_size=scoring.pop("batch_size", "auto"),
        device=scoring.pop("device", None),
        max_gen_toks=scoring.pop("max_gen_toks", None),
        log_samples=scoring.pop("log_samples", False),
        plots=plots,
        progress=progress,
        extra=None,
        allow_weak_sandbox=scoring.pop("allow_weak_sandbox", False),
        model_conditions=None,
        **scoring,
    )
    split = splits.plan(
        searched, reported, run.settings["data_dir"], seed=split_seed, dev_size=dev_size, test_size=limit
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "splits.json").write_text(json.dumps(splits.record(split, split_seed), indent=1))
    aggregates = _aggregates([*searched, *reported])
    objective_fn = search.Objective(weights, aggregates)
    study_settings = {
        "recipe": {"target": pair.target, "grpo": pair.grpo, "sft": pair.sft, "dtype": pair.dtype},
        "space": asdict(the_space),
        "objective": weights,
        "condition": conds[0].name,
        "split_seed": split_seed,
        "dev_size": dev_size,
        "rungs": rungs,
        "eta": eta,
        "data": hashlib.sha256(json.dumps(splits.record(split, split_seed), sort_keys=True).encode()).hexdigest()[:16],
    }
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    study = search.open_study(url, study_name, the_space, schedule, study_settings, heartbeat=heartbeat, grace=grace)
    scorer = scorer or HarnessScorer(
        pair, the_space, split, run, conds[0], searched, [*searched, *reported], rungs, eta, out
    )
    search.run(study, the_space, schedule, objective_fn, scorer, heartbeat=heartbeat)

    with _lock(out / ".tune.lock"):  # processes sharing OUT: one writes at a time, the next finds it cached
        best = search.best_trial(study, the_space)
        winner = search.Candidate(the_space.label(best.params), dict(best.params), the_space.setting(best.params))
        base = search.Candidate(BASE, the_space.zero(), the_space.setting(the_space.zero()))
        scorer.prepare([winner])
        both = _score_all_rungs(scorer, [base, winner], rungs)
        dev = {BASE: both[BASE], "winner": both[winner.label]}
        scored = scorer.score([base, winner], None, "test")
        test = {BASE: scored[BASE], "winner": scored[winner.label]}
        document = _document(
            recipe,
            pair,
            the_space,
            schedule,
            study,
            best,
            winner,
            split,
            split_seed,
            weights,
            aggregates,
            dev,
            test,
            searched,
            reported,
            run,
            scorer,
            url,
            study_name,
            conds[0].name,
            dev_size,
            seed,
        )
        _write(out, document, study, the_space, best, winner, scorer, pair, plots)
    return document


def _comparisons(outcomes, tasks, weights, aggregates, seed) -> List[dict]:
    rows = []
    for task in tasks:
        if not outcomes[BASE].get(task):
            continue
        base, winner = outcomes[BASE][task], outcomes["winner"][task]
        result = _compare(task, base, winner, aggregates, seed)
        rows.append(
            {
                "task": task,
                "metric": None,
                "base": _score_of(task, base, aggregates),
                "winner": _score_of(task, winner, aggregates),
                **result.as_dict(),
            }
        )
    searched = [t for t in weights if outcomes[BASE].get(t)]
    if searched:
        result = _objective_delta(
            {t: weights[t] for t in searched}, outcomes[BASE], outcomes["winner"], aggregates, seed
        )
        if result is not None:
            rows.append(
                {
                    "task": "objective",
                    "metric": " + ".join(f"{weights[t]:g}·{t}" for t in searched),
                    "base": sum(weights[t] * _score_of(t, outcomes[BASE][t], aggregates) for t in searched),
                    "winner": sum(weights[t] * _score_of(t, outcomes["winner"][t], aggregates) for t in searched),
                    **result.as_dict(),
                }
            )
    return rows


def _document(
    recipe,
    pair,
    space,
    schedule,
    study,
    best,
    winner,
    split,
    split_seed,
    weights,
    aggregates,
    dev,
    test,
    searched,
    reported,
    run,
    scorer,
    url,
    study_name,
    condition,
    dev_size,
    seed,
) -> dict:
    from mergekit_reasoning.bench.comparisons import statistics_settings
    from mergekit_reasoning.bench.identity import package_versions
    from mergekit_reasoning.bench.report import PRIMARY

    dev_items = sum(s.dev_size() for t, s in split.items() if t in searched)
    spent = search.generations(study)
    grid = search.grid_generations(space, dev_items)
    records = search.trial_records(study, space)
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "recipe": str(Path(recipe).resolve()),
        "settings": {
            **run.settings,
            "tasks": searched,
            "report": reported,
            "objective": weights,
            "metrics": {t: list(PRIMARY[t]) for t in [*searched, *reported]},
            "condition": condition,
            "space": asdict(space),
            "schedule": asdict(schedule),
            "dev_size": dev_size,
            "split_seed": split_seed,
            "storage": _redacted(url),
            "study_name": study_name,
        },
        "packages": package_versions(),
        "split": splits.record(split, split_seed),
        "winner": {
            "trial": best.number,
            "label": winner.label,
            "params": winner.params,
            "lambda": winner.setting,
            "dev_objective": best.value,
        },
        "search": {
            "trials": len(records),
            "complete": sum(r["state"] == "COMPLETE" for r in records),
            "pruned": sum(r["state"] == "PRUNED" for r in records),
            "duplicates": sum("duplicate_of" in r for r in records),
            "failed": sum(r["state"] == "FAIL" for r in records),
            "generations": spent,
            "generations_this_process": getattr(scorer, "spent", None),
            "dev_items": dev_items,
            "grid_points": space.grid_size(),
            "grid_generations": grid,
            "fraction_of_grid": spent / grid if grid else None,
        },
        "statistics": statistics_settings(seed=paired.SEED),
        "comparisons": {
            "dev": _comparisons(dev, searched, weights, aggregates, paired.SEED),
            "test": _comparisons(test, [*searched, *reported], weights, aggregates, paired.SEED),
        },
        "items": {"dev": _plain(dev), "test": _plain(test)},
    }


def _plain(outcomes) -> dict:
    """Per-item outcomes as results.json keeps them: per model, task and stratum, ids and values."""
    return {
        model: {
            task: {
                name: {"ids": list(vals), "values": [_int(v) for v in vals.values()]} for name, vals in strata.items()
            }
            for task, strata in per.items()
        }
        for model, per in outcomes.items()
    }


def _int(value: float):
    return int(value) if float(value).is_integer() else value


def _redacted(url: str) -> str:
    """A storage URL without its password, for the files this writes."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _pct(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _table_rows(rows: List[dict]) -> List[str]:
    from mergekit_reasoning.bench.report import PRIMARY, delta_cell, p_text

    head = ["task", "metric", "n", BASE, "winner", "Δ [95% CI]", "p", "method", "MDE (80% power)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        metric = r["metric"] or "{} ({})".format(*PRIMARY[r["task"]])
        cell = delta_cell({"value": r["winner"]}, {"value": r["base"]}, r)
        method = r["method"] + (f", {r['strata']} strata" if (r.get("strata") or 1) > 1 else "")
        if r["ci"] is None and r["p"] == 1.0:
            method += "; no item differs"
        mde = "–" if r.get("mde") is None else f"{100 * r['mde']:.1f}"
        lines.append(
            "| "
            + " | ".join(
                [r["task"], metric, str(r["n"]), _pct(r["base"]), _pct(r["winner"]), cell, p_text(r["p"]), method, mde]
            )
            + " |"
        )
    return lines


def _split_line(document: dict) -> str:
    parts = []
    for task, strata in document["split"]["tasks"].items():
        dev = sum(len(s["dev"]) for s in strata)
        test = sum(len(s["test"]) for s in strata)
        first = strata[0]
        where = f"dev {dev} from {first['dev_source']}, " if dev else "report only, "
        parts.append(f"{task}: {where}test {test} from {first['test_source']}")
    return "; ".join(parts)


def markdown(document: dict) -> str:
    from mergekit_reasoning.bench.report import legend, mark

    s, w, srch = document["settings"], document["winner"], document["search"]
    space, sched = s["space"], s["schedule"]
    test_obj = next((r for r in document["comparisons"]["test"] if r["task"] == "objective"), None)
    verdict = ""
    if not any(w["params"].values()):
        verdict = "the best candidate is the base itself (λ = 0): no λ searched scored higher on the dev items."
    elif test_obj is not None:
        delta = f"{100 * test_obj['delta']:+.1f} points"
        if test_obj["ci"] is None:
            verdict = (
                f"it answers every test item as the base does (Δ {delta})."
                if test_obj["p"] == 1.0
                else "too few test items to say whether it beats the base."
            )
        else:
            lo, hi = test_obj["ci"]
            interval = f"[{100 * lo:+.1f}, {100 * hi:+.1f}]{mark(test_obj['ci'])}, p {_p(test_obj['p'])}"
            if lo > 0:
                verdict = f"it **beats the base** by {delta} {interval}."
            elif hi < 0:
                verdict = f"it is **worse than the base** by {delta} {interval}."
            else:
                verdict = f"its Δ {delta} {interval} does not tell it from the base."
    lines = [
        f"# tune: {Path(document['recipe']).name}",
        "",
        f"Winner: `{w['label']}` (λ = {json.dumps(w['lambda'])}), trial {w['trial']}, dev objective "
        f"{_pct(w['dev_objective'])}. "
        + (
            verdict[0].upper() + verdict[1:]
            if verdict.startswith("the best")
            else f"On the held-out test items, {verdict}"
        ),
        "",
        f"Objective: {' + '.join(f'{v:g}·{t}' for t, v in s['objective'].items())} (headline metrics, in percent), condition "
        f"{s['condition']}. Search: {sched['sampler']} sampler, {space['kind']} λ on [{space['low']:g}, {space['high']:g}] "
        f"by {space['step']:g} ({srch['grid_points']} grid points), {sched['pruner']} pruning over {sched['rungs']} rungs of dev "
        f"items (η = {sched['eta']}); {srch['trials']} trials: {srch['complete']} scored on every dev item, {srch['pruned']} "
        f"pruned, {srch['duplicates']} repeats of a point already scored, {srch['failed']} failed and retried. "
        f"Generations: {srch['generations']} item scorings, "
        f"{100 * (srch['fraction_of_grid'] or 0):.1f}% of the {srch['grid_generations']} a full grid of the same resolution "
        f"spends ({srch['grid_points']} points × {srch['dev_items']} dev items).",
        "",
        legend(BASE).replace("Δ in points against", "Δ in points, winner against"),
        "",
        "## Held-out test (never searched on)",
        "",
        *_table_rows(document["comparisons"]["test"]),
        "",
        "## Dev (searched on)",
        "",
        *_table_rows(document["comparisons"]["dev"]),
        "",
        f"Split (seed {s['split_seed']}, every item id in splits.json; dev and test share none): {_split_line(document)}.",
        "",
        "`best.yml` is the winning recipe: `mergekit-yaml best.yml OUT` merges it bit for bit into the model scored here.",
    ]
    return "\n".join(lines) + "\n"


def _p(p) -> str:
    from mergekit_reasoning.bench.report import p_text

    return p_text(p)


def best_yaml(pair, setting, document: dict, recipe_data: dict) -> str:
    import yaml

    srch = document["search"]
    test_obj = next((r for r in document["comparisons"]["test"] if r["task"] == "objective"), None)
    head = [
        f"# tune's winner for {Path(document['recipe']).name}: lambda = {json.dumps(setting)}",
        f"#   dev objective {_pct(document['winner']['dev_objective'])} after {srch['trials']} trials"
        + (
            f"; held-out test Δ against the target {100 * test_obj['delta']:+.1f} points"
            + (f" [{100 * test_obj['ci'][0]:+.1f}, {100 * test_obj['ci'][1]:+.1f}]" if test_obj["ci"] else "")
            if test_obj
            else ""
        ),
        "#   mergekit-yaml best.yml OUT   (or: mergekit-reasoning merge best.yml OUT)",
    ]
    return "\n".join(head) + "\n" + yaml.safe_dump(recipe_data, sort_keys=False)


def _write(out: Path, document, study, space, best, winner, scorer, pair, plots) -> None:
    from mergekit_reasoning.bench.runner import results_text

    data = scorer.recipe_data(winner.setting) if hasattr(scorer, "recipe_data") else pair.merge_recipe().data
    (out / "best.yml").write_text(best_yaml(pair, winner.setting, document, data))
    (out / "results.json").write_text(results_text(document))
    trials = {
        "study": document["settings"]["study_name"],
        "storage": document["settings"]["storage"],
        "space": asdict(space),
        "search": document["search"],
        "trials": search.trial_records(study, space),
    }
    (out / "trials.json").write_text(results_text(trials))
    (out / "table.md").write_text(markdown(document))
    if plots:
        from mergekit_reasoning.bench.plots import plot_objective

        plot_objective(trials["trials"], space, document, out / "plots" / "objective.png")
