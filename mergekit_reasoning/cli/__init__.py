"""`mergekit-reasoning`: the project's own verbs beside the stock `mergekit-yaml`.

Heavy imports (torch, mergekit) happen inside each command, so `--help` is quick.
Every command reports a bad recipe or model as one line and exits non-zero.
"""

import atexit
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import click

from mergekit_reasoning.cli import bench as bench_commands
from mergekit_reasoning.cli import recipes as recipe_commands
from mergekit_reasoning.cli import tune as tune_commands
from mergekit_reasoning.core.errors import Error
from mergekit_reasoning.core.formats import VECTOR_DTYPES
from mergekit_reasoning.core.offline import go_offline_if_unreachable


class OneLineErrors(click.Group):
    """The one place a package error becomes click's `Error: <line>` and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Error as error:
            raise click.ClickException(str(error)) from None


def _note(line: str) -> None:
    click.echo(line, err=True)


def _hub_or_offline() -> None:
    """Before reading models: if the hub is out of reach, say so now rather than retry."""
    go_offline_if_unreachable(_note)


@click.group(cls=OneLineErrors)
@click.version_option(package_name="mergekit-reasoning")
def main():
    """Reasoning vectors for mergekit: target + λ·(GRPO − SFT)."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path))
def check(recipe: Path):
    """Check a recipe and its models without merging anything."""
    from mergekit_reasoning.executor.recipe import Recipe

    _hub_or_offline()
    checked = Recipe.read(recipe).check()
    click.echo(f"target: {checked.config.base_model}")
    for pair in checked.pairs:
        click.echo(f"vector {pair.name!r}: λ={pair.lam:g} × ({pair.grpo} − {pair.sft})")
    for note in checked.notes():
        click.echo(f"note: {note}")
    click.echo("ok: the recipe and its models are compatible")


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--lambda",
    "lambdas",
    type=float,
    multiple=True,
    help="Override λ; repeat it for a sweep that reads the inputs once and writes OUT/lambda_<λ> per value.",
)
@click.option("--cuda", is_flag=True, help="Do the arithmetic on the GPU.")
@click.option("--read-to-gpu", is_flag=True, help="Read weights straight to the GPU (implies --cuda).")
@click.option("--out-shard-size", default="5B", show_default=True, help="Parameters per output shard.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty OUT once the new merge is complete.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--lora-merge-cache",
    type=click.Path(path_type=Path),
    help="Where LoRA donors (model+adapter) are merged into their models first "
    "[default: lora-merges/ in the package's cache folder].",
)
def merge(
    recipe: Path,
    out: Path,
    lambdas,
    cuda: bool,
    read_to_gpu: bool,
    out_shard_size: str,
    overwrite: bool,
    quiet: bool,
    lora_merge_cache: Optional[Path],
):
    """Merge RECIPE into OUT with the streaming executor."""
    from mergekit_reasoning.executor import run
    from mergekit_reasoning.executor.recipe import Recipe

    settings = run.MergeSettings(
        cuda=cuda,
        read_to_gpu=read_to_gpu,
        out_shard_size=out_shard_size,
        quiet=quiet,
        lora_merge_cache=str(lora_merge_cache) if lora_merge_cache else None,
    )
    outs = run.sweep_folders(out, lambdas)
    run.merge(Recipe.read(recipe), outs, settings, lambdas=lambdas or None, overwrite=overwrite, echo=_note)
    for path in outs:
        click.echo(f"wrote {path}")


@main.command()
@click.option("--grpo", required=True, help="The GRPO model (hub ID or folder).")
@click.option("--sft", required=True, help="The SFT model (hub ID or folder).")
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--dtype",
    type=click.Choice(VECTOR_DTYPES),
    default="float32",
    show_default=True,
    help="float32 is lossless: applying the vector then equals merging the pair, bit for bit.",
)
@click.option(
    "--sparsify",
    type=click.Choice(["magnitude", "dare"]),
    default=None,
    help="magnitude keeps the largest entries; dare keeps random ones and rescales.",
)
@click.option("--density", type=float, default=1.0, show_default=True, help="Fraction of entries kept.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for dare.")
@click.option(
    "--storage",
    type=click.Choice(["dense", "sparse"]),
    default="dense",
    show_default=True,
    help="sparse keeps only nonzero entries, compact for sharing; `densify` restores the dense folder.",
)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty OUT once the new vector is complete.")
def extract(grpo, sft, out, dtype, sparsify, density, seed, storage, overwrite):
    """Write the reasoning vector GRPO − SFT as a shareable folder."""
    _hub_or_offline()
    from mergekit_reasoning.vectors.files import Sparsify
    from mergekit_reasoning.vectors.files import extract as extract_vector

    plan = Sparsify(sparsify, density, seed) if sparsify else None
    manifest = extract_vector(
        grpo,
        sft,
        out,
        dtype=dtype,
        sparsify=plan,
        storage=storage,
        overwrite=overwrite,
        echo=lambda m: click.echo(m, err=True),
    )
    size = sum(p.stat().st_size for p in Path(out).glob("*.safetensors"))
    click.echo(
        f"wrote {out}: {len(manifest['tensors'])} tensors, {size / 1e6:.1f} MB {dtype}, "
        f"norm {manifest['total_norm']:.6g}, distance from the full vector {manifest['relative_error']:.3%}"
    )


@main.command()
@click.argument("source", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace a non-empty OUT once the dense folder is complete.")
def densify(source, out, overwrite):
    """Turn a sparse vector folder back into the dense folder that recipes apply."""
    from mergekit_reasoning.vectors.files import densify as densify_vector

    densify_vector(source, out, overwrite=overwrite)
    size = sum(p.stat().st_size for p in Path(out).glob("*.safetensors"))
    click.echo(f"wrote {out}: {size / 1e6:.1f} MB dense")


@main.command(name="inspect")
@click.argument("vector", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--target",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="A model folder: report the vector's size relative to its weights.",
)
@click.option(
    "--compare",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="Another vector folder: report cosine similarity.",
)
@click.option("--plot", type=click.Path(path_type=Path), help="Write a PNG of the per-layer figures.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect_vector(vector, target, compare, plot, as_json):
    """Norms per layer and module, relative size, sparsity, cosine similarity."""
    import json

    from mergekit_reasoning.vectors.stats import format_table, vector_stats
    from mergekit_reasoning.vectors.stats import plot as plot_stats

    stats = vector_stats(vector, target=target, other=compare)
    click.echo(json.dumps(stats, indent=2) if as_json else format_table(stats))
    if plot:
        click.echo(f"wrote {plot_stats(stats, plot)}", err=True)


@main.command()
@click.argument("folder", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--inputs", "check_inputs", is_flag=True, help="Also re-hash the inputs recorded in the manifest.")
@click.option("--rehash", is_flag=True, help="With --inputs: read every input file, trusting no cached hash.")
@click.option("--remerge", is_flag=True, help="Also merge again from the recorded recipe and compare the shards.")
def verify(folder, check_inputs, rehash, remerge):
    """Check a merge (or a vector folder) against its manifest; name every shard that differs."""
    from mergekit_reasoning.repro.verify import verify_folder

    if check_inputs or remerge:
        _hub_or_offline()
    notes = []
    problems = verify_folder(folder, check_inputs=check_inputs, remerge=remerge, rehash=rehash, notes=notes)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    for problem in problems:
        click.echo(f"{folder}: {problem}", err=True)
    if problems:
        raise SystemExit(1)
    click.echo(f"ok: {folder} matches its manifest")


@main.command()
@click.argument("folders", nargs=-1, type=click.Path(path_type=Path, file_okay=False))
def clean(folders):
    """Remove what killed merges and extractions left beside their outputs (hidden .partial-,
    .reserved- and .old- files of processes no longer running) in FOLDERS (default: here)."""
    from mergekit_reasoning.core.staging import remove_leftovers

    removed = [path for folder in folders or (Path("."),) for path in remove_leftovers(folder)]
    for path in removed:
        click.echo(f"removed {path}")
    click.echo(f"{len(removed)} leftovers removed")


@main.command()
@click.argument("recipes", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="One output folder per recipe, named after it.",
)
@click.option("--cuda", is_flag=True, help="Do the arithmetic on the GPU.")
def regenerate(recipes, out_dir, cuda):
    """Re-merge the recipes whose text or inputs changed; skip the rest."""
    from mergekit_reasoning.executor.run import MergeSettings
    from mergekit_reasoning.repro.regenerate import regenerate as run

    _hub_or_offline()
    outcome = run(recipes, out_dir, MergeSettings(cuda=cuda), echo=click.echo)
    click.echo(f"{len(outcome.merged)} merged, {len(outcome.skipped)} unchanged, {len(outcome.failed)} failed")
    if outcome.failed:
        raise SystemExit(1)


@main.command()
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to put the stand-in models and the merge (default: a temporary folder).",
)
@click.option(
    "--shape",
    type=click.Choice(["tiny", "qwen2.5-1.5b"]),
    default="tiny",
    show_default=True,
    help="Stand-in sizes: tiny (seconds), or Qwen2.5-1.5B's real widths and 151,936-row vocabulary with "
    "two layers (about 2 GB of disk and 3 GB of memory, a minute or two).",
)
def demo(workdir, shape):
    """Merge small stand-in models offline with the stock mergekit-yaml and check the result."""
    from mergekit_reasoning.testing.demo import run_demo

    run_demo(workdir, shape=shape, echo=click.echo)


main.add_command(bench_commands.bench)
main.add_command(bench_commands.reproduce_command)
main.add_command(recipe_commands.recipes)
main.add_command(tune_commands.tune_command)


def _terminated(signum, frame) -> None:
    click.echo("terminated", err=True)
    raise SystemExit(128 + signum)


def run() -> None:
    """The console script: the CLI, then an exit that skips tearing the interpreter down.

    Once a command has finished, Python would spend about a second unloading
    the modules torch and mergekit bring in (measured: 1.2 s of a 9 s merge).
    Nothing is left to do by then, so after the exit handlers have run and
    the output is flushed, the process ends at once. If a command left a
    non-daemon thread running, the ordinary exit waits for it instead.
    A SIGTERM unwinds like Ctrl-C does: staging folders and reserved files
    are removed on the way out.
    """
    signal.signal(signal.SIGTERM, _terminated)
    try:
        main()
        code = 0
    except SystemExit as done:
        code = done.code
    if isinstance(code, str):
        click.echo(code, err=True)
        code = 1
    code = code or 0
    if any(not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()  # logging's shutdown, temporary folders' finalizers
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe: nothing more can be said
    os._exit(code)


if __name__ == "__main__":
    run()
