"""`mergekit-reasoning tune`: its options. Cheap to import; optuna and lm_eval load when it runs."""

from __future__ import annotations

from pathlib import Path

import click

from mergekit_reasoning.bench.search import GRACE_S, HEARTBEAT_S, PRUNERS, SAMPLERS, SPACES
from mergekit_reasoning.bench.tune import DEFAULT_OBJECTIVE
from mergekit_reasoning.cli.bench import one_line_errors, scoring_kwargs, scoring_options


@click.command("tune")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    default="tune-out",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for best.yml, table.md, results.json, trials.json, splits.json, plots/, the study, merges and cache.",
)
@click.option(
    "--objective",
    default=DEFAULT_OBJECTIVE,
    show_default=True,
    help="Headline metrics to maximise on the dev items, as task=weight pairs, e.g. gsm8k_cot=1,bbh=1.",
)
@click.option("--report", help="Tasks scored on the test items only, beside the objective's, e.g. humaneval.")
@click.option(
    "--space",
    type=click.Choice(SPACES),
    default="global",
    show_default=True,
    help="global: one λ; groups: one λ each for norms, attention, MLP, embeddings+head; gradient: λ over layer bands.",
)
@click.option(
    "--lambda-min", default=-1.0, show_default=True, help="Lowest λ searched (negative subtracts the vector)."
)
@click.option("--lambda-max", default=2.0, show_default=True, help="Highest λ searched.")
@click.option("--step", default=0.25, show_default=True, help="Grid step of λ (the search's resolution).")
@click.option("--bands", default=3, show_default=True, help="--space gradient: λ values spread over the layers.")
@click.option(
    "--trials", default=12, show_default=True, help="Candidates in all (processes sharing a study count together)."
)
@click.option("--batch", default=4, show_default=True, help="Candidates proposed, merged and scored together.")
@click.option("--dev-size", default=200, show_default=True, help="Dev items per task (each BBH subtask counts as one).")
@click.option(
    "--rungs", default=5, show_default=True, help="Rungs of dev items; each holds η times the items of the one before."
)
@click.option("--eta", default=2, show_default=True, help="Growth of the rungs (sha: keeps about 1/η of a rung).")
@click.option(
    "--pruner",
    type=click.Choice(PRUNERS),
    default="wilcoxon",
    show_default=True,
    help="wilcoxon: stop a candidate once it is worse than the best at p < --p-prune (paired by item); "
    "sha: successive halving; hyperband; none.",
)
@click.option("--p-prune", default=0.1, show_default=True, help="wilcoxon: the p-value at which a candidate stops.")
@click.option(
    "--polish",
    default=2,
    show_default=True,
    help="Then score every untried grid point within this many steps of the best.",
)
@click.option("--startup", default=4, show_default=True, help="tpe: random candidates before it models the objective.")
@click.option(
    "--sampler", type=click.Choice(SAMPLERS), default="tpe", show_default=True, help="optuna sampler proposing λ."
)
@click.option("--seed", default=0, show_default=True, help="The sampler's seed.")
@click.option("--split-seed", default=0, show_default=True, help="Seed of the dev/test split.")
@click.option("--storage", help="Study storage URL (default: sqlite in OUT); several processes may share one.")
@click.option("--study-name", default="tune", show_default=True, help="Name of the study in the storage.")
@click.option(
    "--condition", default="plain", show_default=True, help="Prompt condition scored: plain, think, chat, think+chat."
)
@click.option(
    "--heartbeat", default=HEARTBEAT_S, show_default=True, help="Seconds between a running trial's heartbeats."
)
@click.option(
    "--grace",
    default=GRACE_S,
    show_default=True,
    help="Seconds without a heartbeat after which another process retries a trial (one of this host whose "
    "process is gone: at once).",
)
@scoring_options
def tune_command(recipe, out_dir, **options):
    """Search λ for RECIPE on dev items and report the winner on held-out test items.

    Dev and test never share an item (GSM8K: dev from the train file; BBH and a one-file
    SciQ: seeded halves; HumanEval: report only). Writes OUT/best.yml (stock
    `mergekit-yaml` merges it bit for bit into the scored winner), OUT/table.md (base and
    winner on dev and test, Δ with paired intervals), results.json, trials.json and plots.
    Rerun the same command to resume; point several at one --storage to share the search.
    --limit caps the test items per task.
    """
    names = (
        "objective",
        "report",
        "space",
        "lambda_min",
        "lambda_max",
        "step",
        "bands",
        "trials",
        "batch",
        "dev_size",
        "rungs",
        "eta",
        "pruner",
        "p_prune",
        "polish",
        "startup",
        "sampler",
        "seed",
        "split_seed",
        "storage",
        "study_name",
        "condition",
        "heartbeat",
        "grace",
    )
    search_options = {name: options.pop(name) for name in names}
    with one_line_errors():
        from mergekit_reasoning.bench.tune import tune

        tune(recipe, out_dir, **search_options, **scoring_kwargs(**options))
    click.echo(open(f"{out_dir}/table.md").read())
    click.echo(f"best recipe: {out_dir}/best.yml; results: {out_dir}/results.json; trials: {out_dir}/trials.json")
