"""`mergekit-reasoning bench` and `reproduce`: their options. Cheap to import; lm_eval loads when a run starts."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import click

from mergekit_reasoning.bench.engines import DTYPES
from mergekit_reasoning.bench.reproduce import CONDITIONS as REPRODUCE_CONDITIONS
from mergekit_reasoning.bench.reproduce import DEFAULT_TASKS as REPRODUCE_TASKS
from mergekit_reasoning.core.errors import BenchError

DEFAULT_TASKS = "gsm8k,humaneval,sciq,bbh"


def _labelled(values) -> dict:
    models = {}
    for value in values:
        label, sep, ref = value.partition("=")
        if not sep or not label or not ref:
            raise BenchError(f"--model expects LABEL=PATH_OR_HUB_ID, got {value!r}")
        if label in models:
            raise BenchError(f"model label {label!r} given twice")
        models[label] = ref
    return models


def _batch(value: str):
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise BenchError(f"--batch-size expects a number or 'auto', got {value!r}") from None


ENGINE_OPTION_NAMES = (
    "tensor_parallel_size",
    "data_parallel_size",
    "gpu_memory_utilization",
    "max_model_len",
    "enforce_eager",
    "parallelize",
)

# The options every scoring command (bench, reproduce) takes, in the order --help lists them.
_SCORING_OPTIONS = (
    click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        help="Local copies of the data instead of the hub: DIR/gsm8k/{train,test}.jsonl, DIR/bbh/<task>.json, "
        "DIR/humaneval/HumanEval.jsonl.gz, DIR/sciq/test.jsonl (or validation.jsonl).",
    ),
    click.option("--limit", type=int, help="Score only the first N examples of each task."),
    click.option("--batch-size", default="auto", show_default=True, help="Generation batch size or 'auto'."),
    click.option("--device", help="hf engine: cuda, cuda:1, cpu ... (default: cuda if available). vLLM picks its own."),
    click.option(
        "--engine",
        type=click.Choice(["hf", "vllm"]),
        default="hf",
        show_default=True,
        help="lm-eval's model class: hf (transformers generate) or vllm.",
    ),
    click.option(
        "--dtype",
        type=click.Choice(DTYPES),
        default="auto",
        show_default=True,
        help="Weights' dtype while scoring (auto: the model's own).",
    ),
    click.option("--tensor-parallel-size", type=int, help="vllm: GPUs one model is split over."),
    click.option("--data-parallel-size", type=int, help="vllm: model replicas, one per group of GPUs (needs ray)."),
    click.option("--gpu-memory-utilization", type=float, help="vllm: fraction of each GPU's memory it may take."),
    click.option("--max-model-len", type=int, help="vllm: context length (prompt + generation) it reserves for."),
    click.option(
        "--enforce-eager",
        is_flag=True,
        default=None,
        help="vllm: no CUDA graphs / compilation (fast start, slower run).",
    ),
    click.option("--parallelize", is_flag=True, default=None, help="hf: shard one model over all visible GPUs."),
    click.option("--max-gen-toks", type=int, help="Cap generated tokens (quick checks only; changes scores)."),
    click.option("--log-samples", is_flag=True, help="Keep per-sample outputs in results.json."),
    click.option("--no-plots", is_flag=True, help="Skip the PNG plots."),
    click.option(
        "--allow-weak-sandbox",
        is_flag=True,
        help="Score HumanEval even where full sandbox isolation is missing (recorded in the results).",
    ),
    click.option(
        "--ray",
        is_flag=False,
        flag_value="local",
        default=None,
        metavar="[ADDRESS]",
        help="Score each unit as a task on a Ray cluster: `auto` joins the one `ray start` made, an address "
        "that cluster, no value starts one here. Needs the ray extra.",
    ),
    click.option(
        "--keep-merges",
        is_flag=True,
        help="With --ray: leave each merge on the disk of the node that made it (default: removed once scored).",
    ),
)


def scoring_options(command):
    """Add the shared scoring options to a click command (they arrive as keyword arguments)."""
    for option in reversed(_SCORING_OPTIONS):
        command = option(command)
    return command


def scoring_kwargs(*, batch_size, no_plots, ray=None, keep_merges=False, **given) -> dict:
    """run_bench's keyword arguments from the shared options; engine options, and Ray's, only where given."""
    engine_options = {name: given.pop(name) for name in ENGINE_OPTION_NAMES}
    if keep_merges and ray is None:
        raise BenchError("--keep-merges is for --ray runs (a local run keeps its merges in OUT/merges)")
    return {
        **({"ray": ray, "keep_merges": keep_merges} if ray is not None else {}),
        **given,
        "batch_size": _batch(batch_size),
        "plots": not no_plots,
        **{k: v for k, v in engine_options.items() if v is not None},
    }


@contextmanager
def one_line_errors():
    """A missing extra ends the command with one line and exit status 1 (package errors
    are turned into one line by the command group, `cli.OneLineErrors`)."""
    try:
        yield
    except ImportError as exc:
        raise click.ClickException(
            f"{exc.name or exc} is missing: install the benchmark extra: pip install '.[bench]' in a clone of mergekit-reasoning"
        ) from None


def print_table(out_dir) -> None:
    click.echo(open(f"{out_dir}/table.md").read())
    click.echo(f"results: {out_dir}/results.json")


@click.command("bench")
@click.option(
    "--model", "models", multiple=True, metavar="LABEL=PATH", help="A labelled model: local folder or hub id. Repeat."
)
@click.option(
    "--tasks",
    default=DEFAULT_TASKS,
    show_default=True,
    help="Comma list of gsm8k (= gsm8k_cot,gsm8k_5shot), gsm8k_cot, gsm8k_5shot, humaneval, sciq, bbh, bbh_<task>.",
)
@click.option("--conditions", default="plain", show_default=True, help="Comma list of plain, think, chat, think+chat.")
@click.option("--adversarial", is_flag=True, help="Also score GSM8K with seeded distractor sentences.")
@click.option(
    "--adversarial-seed", default=0, show_default=True, help="Seed that picks and places the distractor sentences."
)
@click.option("--baseline", help="Label the deltas are taken against (default: the first model).")
@click.option(
    "--out",
    "out_dir",
    default="bench-out",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for table.md, results.json, plots/ and the score cache.",
)
@scoring_options
@click.option("--sweep", "sweep", help="λ values (comma list): merge and score each; needs --target, --sft, --grpo.")
@click.option("--target", help="Target (instruct) model for --sweep.")
@click.option("--sft", help="SFT model for --sweep.")
@click.option("--grpo", help="GRPO model for --sweep.")
def bench(
    models, tasks, conditions, adversarial, adversarial_seed, baseline, out_dir, sweep, target, sft, grpo, **scoring
):
    """Score labelled models (or a λ sweep) on GSM8K, HumanEval, SciQ and BBH.

    Writes OUT/table.md, OUT/results.json and OUT/plots/*.png; finished scores are
    cached in OUT/cache, so an interrupted run resumes where it stopped.
    """
    with one_line_errors():
        options = dict(
            conditions=conditions,
            adversarial=adversarial,
            adversarial_seed=adversarial_seed,
            baseline=baseline,
            **scoring_kwargs(**scoring),
        )
        if sweep:
            if models:
                raise BenchError("--sweep and --model cannot be combined")
            if not (target and sft and grpo):
                raise BenchError("--sweep needs --target, --sft and --grpo")
            try:
                lambdas = [float(x) for x in sweep.split(",") if x.strip()]
            except ValueError:
                raise BenchError(f"--sweep expects numbers, got {sweep!r}") from None
            from mergekit_reasoning.bench.sweep import run_sweep

            run_sweep(target, sft, grpo, lambdas, tasks, out_dir, **options)
        else:
            if not models:
                raise BenchError("give at least one --model LABEL=PATH (or --sweep)")
            from mergekit_reasoning.bench.runner import run_bench

            if run_bench(_labelled(models), tasks, out_dir=out_dir, **options) is None:
                return  # a non-zero rank under `accelerate launch`: rank 0 reports
    print_table(out_dir)


@click.command("reproduce")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    default="reproduce-out",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for table.md, results.json, plots/, the merges and the score cache.",
)
@click.option(
    "--tasks", default=REPRODUCE_TASKS, show_default=True, help="As for bench, e.g. gsm8k_cot,sciq,bbh_navigate."
)
@click.option(
    "--conditions",
    default=REPRODUCE_CONDITIONS,
    show_default=True,
    help="As for bench; the paper's are plain and think.",
)
@click.option(
    "--paper-size",
    default="auto",
    show_default=True,
    help="Which of the paper's figures to show: auto (from the target's name), 1.5B, 7B, or none.",
)
@click.option(
    "--no-donor",
    is_flag=True,
    help="Do not score the GRPO donor with the think prompt (the paper's G+T reference row).",
)
@scoring_options
def reproduce_command(recipe, out_dir, tasks, conditions, paper_size, no_donor, **scoring):
    """The paper's table: merge +v and −v from RECIPE, score them and the target, compare with the paper.

    Scores the recipe's target (base), target + |λ|·v and target − |λ|·v on GSM8K
    (plain and with distractors), HumanEval, SciQ and BBH, each with the plain and
    the "think step by step" prompt, and the GRPO donor with the think prompt (G+T).
    Writes OUT/table.md, OUT/results.json and OUT/plots; merges go to OUT/merges.
    A rerun reuses every finished merge and score.
    """
    with one_line_errors():
        from mergekit_reasoning.bench.reproduce import reproduce

        reproduce(
            recipe,
            out_dir,
            tasks=tasks,
            conditions=conditions,
            paper_size=paper_size,
            donor=not no_donor,
            **scoring_kwargs(**scoring),
        )
    print_table(out_dir)
