"""`mergekit-reasoning reproduce RECIPE`: the paper's table in one command.

From one reasoning_vector recipe (a GRPO/SFT pair, a target and λ) it merges
target + |λ|·v and target − |λ|·v in one streaming pass, scores the target and both
merges under the paper's conditions (plain and "think step by step" prompts, GSM8K
also with distractors), the GRPO donor with the think prompt as a reference (the
paper's G+T row), and writes the table with the paper's reported deltas, each under
its condition, beside the measured ones. Merges and scores are reused like `bench`'s,
so a rerun resumes. Cheap to import: mergekit and lm_eval load when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from mergekit_reasoning.bench import paper, registry
from mergekit_reasoning.bench.conditions import parse_conditions
from mergekit_reasoning.core.errors import BenchError
from mergekit_reasoning.executor.recipe import Recipe

DEFAULT_TASKS = "gsm8k,humaneval,sciq,bbh"
CONDITIONS = "plain,think"
BASE, PLUS, MINUS, DONOR = "base", "+v", "-v", "G+T"

_TOP_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype"}
_ONLY = "{} merges one GRPO/SFT pair with one global λ"


@dataclass(frozen=True)
class PairRecipe:
    """What a plain pair recipe says: target + lam·(grpo − sft), merged in `dtype`."""

    target: str
    grpo: str
    sft: str
    lam: float
    dtype: str

    def merge_recipe(self) -> Recipe:
        """The recipe the merges are made from: the same pair written plainly, so a recipe
        and its subtracting twin (or one with other comments) share their merges."""
        return Recipe.for_pair(self.target, self.grpo, self.sft, 1.0, self.dtype)


def read_pair_recipe(path: Union[str, Path], verb: str = "reproduce") -> PairRecipe:
    """Read RECIPE and refuse, in one line, anything `merge_lambdas` would not merge exactly as written
    (`verb`: the command, named in the message)."""
    only = _ONLY.format(verb)
    recipe = Recipe.read(Path(path))
    recipe.config()  # mergekit's schema, merge_method and base_model
    data = recipe.data
    where = f"recipe {path}"
    unsupported = sorted(set(data) - _TOP_KEYS)
    if unsupported:
        raise BenchError(
            f"{where}: {only}; `{unsupported[0]}` is not supported here (merge with "
            "`mergekit-reasoning merge`, then score with `bench`)"
        )
    target = data["base_model"]
    if not isinstance(target, str):
        raise BenchError(f"{where}: base_model must be a model name or folder")
    roles = {}
    for entry in data.get("models") or []:
        model = entry.get("model") if isinstance(entry, dict) else None
        if model == target:
            continue
        params = entry.get("parameters") or {}
        extra = sorted((set(entry) - {"model", "parameters"}) | (set(params) - {"role"}))
        if not isinstance(model, str) or extra:
            raise BenchError(
                f"{where}: model {model}: {only}; `{extra[0] if extra else 'model'}` is not supported here"
            )
        role = params.get("role")
        if role not in ("grpo", "sft"):
            raise BenchError(f"{where}: model {model} has role {role!r}; {only}: one `role: grpo` and one `role: sft`")
        if role in roles:
            raise BenchError(f"{where}: two models have role {role} ({roles[role]}, {model}); {only}")
        roles[role] = model
    if set(roles) != {"grpo", "sft"}:
        missing = sorted({"grpo", "sft"} - set(roles))[0]
        raise BenchError(f"{where}: no model has role {missing}; {only}")
    params = data.get("parameters") or {}
    if set(params) - {"lambda"}:
        raise BenchError(f"{where}: parameter `{sorted(set(params) - {'lambda'})[0]}` is not supported here; {only}")
    lam = params.get("lambda", 1.0)
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam == 0:
        raise BenchError(
            f"{where}: lambda must be a nonzero number (its sign is ignored: +|λ| and −|λ| are both merged), got {lam!r}"
        )
    dtype = data.get("dtype")
    if dtype is None or data.get("out_dtype", dtype) != dtype:
        raise BenchError(f"{where}: set dtype, and out_dtype equal to it (got {dtype!r} and {data.get('out_dtype')!r})")
    return PairRecipe(target=target, grpo=roles["grpo"], sft=roles["sft"], lam=abs(float(lam)), dtype=str(dtype))


def _size(paper_size: Optional[str], target: str) -> Optional[str]:
    if paper_size in (None, "auto"):
        return paper.size_of(target)
    paper.check_size(paper_size)
    return None if paper_size == "none" else paper_size


def reproduce(
    recipe: Union[str, Path],
    out_dir: Union[str, Path] = "reproduce-out",
    *,
    tasks: str = DEFAULT_TASKS,
    conditions: str = CONDITIONS,
    paper_size: Optional[str] = "auto",
    plots: bool = True,
    donor: bool = True,
    **options,
) -> dict:
    """Merge ±|λ|·v from RECIPE, score base, +v and −v, write table.md with the paper's deltas.

    `paper_size` picks the paper's figures: "auto" reads the size from the target's
    name (e.g. 1.5B or 7B), "none" shows none. With `donor` (the default) the GRPO
    donor is also scored, as `G+T`, under each of `conditions` with the think prompt:
    the paper's reference row. Every other keyword (data_dir, limit, batch_size,
    device, engine options, ray ...) goes to `run_bench` unchanged; with `ray`, ±v are
    merged on the nodes that score them.
    """
    from mergekit_reasoning.bench.runner import run_bench
    from mergekit_reasoning.bench.sweep import merged_models

    pair = read_pair_recipe(recipe)
    size = _size(paper_size, pair.target)
    task_list = registry.expand(tasks)
    if options.get("data_dir"):  # before minutes of merging, not after
        for task in task_list:
            registry.check_data(task, Path(options["data_dir"]).expanduser())
    out = Path(out_dir)
    merged = merged_models(pair.merge_recipe(), [pair.lam, -pair.lam], out / "merges", options.get("ray"))
    models = {BASE: pair.target, PLUS: merged[pair.lam], MINUS: merged[-pair.lam]}
    conds = parse_conditions(conditions)
    think = [c for c in conds if c.prompt == "think"] if donor else []
    if think:  # the paper's G+T: the GRPO donor, prompted to think step by step
        models[DONOR] = pair.grpo
        options["model_conditions"] = {**options.get("model_conditions", {}), DONOR: think}
    # The paper's Δ: every model against the target under the plain prompt, paired like the others.
    plain_names = {c.name for c in conds}
    against_plain = [
        (label, c.name, BASE, paper.plain_counterpart(c.name))
        for label in models
        if label != BASE
        for c in (think if label == DONOR else conds)
        if paper.plain_counterpart(c.name) != c.name and paper.plain_counterpart(c.name) in plain_names
    ]
    options["contrasts"] = [*options.get("contrasts", ()), *against_plain]
    extra = {
        **options.pop("extra", {}),
        "reproduce": {
            "recipe": str(Path(recipe).resolve()),
            "lambda": pair.lam,
            "merge_dtype": pair.dtype,
            "target": pair.target,
            "grpo": pair.grpo,
            "sft": pair.sft,
            "donor": DONOR if think else None,
            "paper": {
                "source": paper.SOURCE,
                "size": size,
                "target": paper.TARGETS.get(size or ""),
                "figures": paper.reported(size),
            },
        },
    }
    document = run_bench(
        models,
        task_list,
        conditions=conditions,
        out_dir=out,
        baseline=BASE,
        adversarial=True,
        plots=plots,
        extra=extra,
        **options,
    )
    every_score = (out / "table.md").read_text().replace("# Benchmark results", "## Every score", 1)
    head = (
        f"# Reproduction of {paper.SOURCE}\n\n"
        f"`{recipe}`: {BASE} = {pair.target}; "
        f"{PLUS} / {MINUS} = {BASE} ± {pair.lam:g}·({pair.grpo} − {pair.sft})"
        + (f"; {DONOR} = {pair.grpo} with the think prompt" if think else "")
        + ".\n\n"
    )
    comparison = paper.comparison_markdown(
        document, size, {PLUS: PLUS, MINUS: MINUS}, donor=DONOR if think else None, target=pair.target
    )
    (out / "table.md").write_text(head + comparison + "\n" + every_score)
    return document
