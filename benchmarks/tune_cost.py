"""What `tune`'s search costs and how often it picks what a full grid picks, on simulated models.

A simulated candidate at λ answers dev item i right when θ(λ) − d_i + σ·ε_i(λ) > 0:

- θ(λ) = θ0 + h·exp(−½((λ − λ*)/w)²): a response surface with one optimum λ*, drawn per
  seed in [−0.25, 1.5] (θ0 = −0.3, h = 0.5, w = 0.6: about 39% right far from λ*, 57% at it);
- d_i ~ N(0, 1): the item's difficulty, the same for every λ (hard items are hard for all);
- ε_i(λ): the item's own noise at each λ of the grid, seeded per item and λ, correlated
  between neighbouring grid points with coefficient ρ (AR(1) along the grid; ρ = 0 is
  independent noise at every λ), σ = 0.5.

The outcome of item i at λ is fixed per seed, whoever scores it. A full grid scores every
grid point (λ from −1 to 2 by 0.125: 25 points) on every dev item and picks the best mean
(ties: the λ nearest 0, as tune breaks them). `tune`'s search (mergekit_reasoning.bench.
search.run, in-memory optuna study, the scorer replaced by the simulation) picks its best
finished trial. Per configuration and over many seeds: how often tune's pick is the grid's
pick, how often each is within the tolerance (±0.25) of the true optimum λ*, and the
generations (item scorings) tune spent as a share of the grid's.

    python benchmarks/tune_cost.py [--seeds 200] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mergekit_reasoning.bench import search, splits  # noqa: E402

TOLERANCE = 0.25
TASK = "sim"


class Simulated:
    """The Scorer `search.run` calls: outcomes looked up in a table fixed per seed."""

    def __init__(self, space: search.Space, seed: int, n: int, rungs: int, eta: int, *, rho: float, sigma=0.5):
        rng = np.random.default_rng(seed)
        self.space, self.n, self.rungs, self.eta = space, n, rungs, eta
        self.grid = np.array(space.values())
        self.optimum = rng.uniform(-0.25, 1.5)
        theta = -0.3 + 0.5 * np.exp(-0.5 * ((self.grid - self.optimum) / 0.6) ** 2)
        difficulty = rng.normal(size=n)
        fresh = rng.normal(size=(len(self.grid), n))
        noise = fresh.copy()
        for j in range(1, len(self.grid)):  # AR(1) along the grid: neighbouring λ share most of their noise
            noise[j] = rho * noise[j - 1] + math.sqrt(1 - rho * rho) * fresh[j]
        self.table = (theta[:, None] - difficulty[None, :] + sigma * noise > 0).astype(float)
        self.flip = float((self.table[1:] != self.table[:-1]).mean())  # neighbours' discordance
        self.scored = 0

    def prepare(self, candidates) -> None:
        pass

    def dev_sizes(self):
        return {TASK: {TASK: self.n}}

    def score(self, candidates, rung, role="dev"):
        sizes = splits.rung_sizes(self.n, self.rungs, self.eta)
        start, stop = (0 if rung == 0 else sizes[rung - 1]), sizes[rung]
        out = {}
        for c in candidates:
            row = self.table[int(round((c.params["lambda"] - self.space.low) / self.space.step))]
            out[c.label] = {TASK: {TASK: {i: float(row[i]) for i in range(start, stop)}}}
            self.scored += stop - start
        return out

    def grid_pick(self) -> float:
        means = self.table.mean(axis=1)
        best = [j for j in range(len(means)) if means[j] == means.max()]
        return float(self.grid[min(best, key=lambda j: (self.grid[j] ** 2, j))])


@dataclass(frozen=True)
class Config:
    name: str
    schedule: search.Schedule
    n: int = 600  # dev items
    rho: float = 0.9


def run(config: Config, seeds: range, space: search.Space) -> dict:
    same = tune_ok = grid_ok = 0
    spent, flips = [], []
    for seed in seeds:
        schedule = replace(config.schedule, seed=seed)
        sim = Simulated(space, 1000 + seed, config.n, schedule.rungs, schedule.eta, rho=config.rho)
        study = search.open_study(None, "sim", space, schedule, {})
        search.run(study, space, schedule, search.Objective({TASK: 1.0}), sim)
        pick = search.best_trial(study, space).params["lambda"]
        grid = sim.grid_pick()
        same += pick == grid
        tune_ok += abs(pick - sim.optimum) <= TOLERANCE
        grid_ok += abs(grid - sim.optimum) <= TOLERANCE
        assert search.generations(study) == sim.scored
        spent.append(sim.scored / (len(sim.grid) * config.n))
        flips.append(sim.flip)
    k = len(seeds)
    return {
        "same": same / k,
        "tune_ok": tune_ok / k,
        "grid_ok": grid_ok / k,
        "mean": float(np.mean(spent)),
        "median": float(np.median(spent)),
        "p95": float(np.percentile(spent, 95)),
        "flip": float(np.mean(flips)),
    }


def configs(quick: bool):
    default = search.Schedule()  # what tune runs by default
    sha = search.Schedule(rungs=3, eta=3, pruner="sha", sampler="grid", trials=25, batch=25, polish=0)
    rows = [
        Config("tune's defaults", default),
        Config("tune's defaults, ρ = 0 (independent noise per λ)", default, rho=0.0),
        Config("tune's defaults, ρ = 0.97", default, rho=0.97),
        Config("tune's defaults, 300 dev items", default, n=300),
        Config("tune's defaults, 1200 dev items", default, n=1200),
        Config("defaults without the polish", replace(default, polish=0)),
        Config(
            "grid sampler + wilcoxon, p 0.2 (25 trials)",
            replace(default, sampler="grid", trials=25, batch=5, p_prune=0.2, polish=0),
        ),
        Config("grid sampler + successive halving (η 3, 3 rungs)", sha),
        Config("TPE + successive halving (η 3, 3 rungs), 25 trials", replace(sha, sampler="tpe", batch=5, startup=10)),
    ]
    return rows[:2] if quick else rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="two configurations, for a smoke test")
    args = parser.parse_args(argv)
    space = search.Space("global", -1.0, 2.0, 0.125)
    seeds = range(args.seeds)
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{args.seeds} seeds per row; λ grid [{space.low:g}, {space.high:g}] by {space.step:g} "
        f"({space.points()} points); tolerance ±{TOLERANCE:g}.\n"
    )
    head = "| search | dev items | ρ | neighbours differ on | same pick as the grid | tune within ±0.25 of λ* | grid within ±0.25 of λ* | generations vs grid: mean | median | 95th pct | s |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for config in configs(args.quick):
        start = time.perf_counter()
        r = run(config, seeds, space)
        print(
            f"| {config.name} | {config.n} | {config.rho:g} | {100 * r['flip']:.1f}% | {100 * r['same']:.1f}% | "
            f"{100 * r['tune_ok']:.1f}% | {100 * r['grid_ok']:.1f}% | {100 * r['mean']:.1f}% | {100 * r['median']:.1f}% | "
            f"{100 * r['p95']:.1f}% | {time.perf_counter() - start:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
