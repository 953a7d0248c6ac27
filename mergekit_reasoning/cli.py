"""`mergekit-reasoning`: the project's own verbs beside the stock `mergekit-yaml`.

Heavy imports (torch, mergekit) happen inside each command, so `--help` is quick.
Every command reports a bad recipe or model as one line and exits non-zero.
"""

from pathlib import Path

import click


@click.group()
@click.version_option(package_name="mergekit-reasoning")
def main():
    """Reasoning vectors for mergekit: target + λ·(GRPO − SFT)."""


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path))
def check(recipe: Path):
    """Check a recipe and its models without merging anything."""
    from mergekit_reasoning.recipe import check_recipe, load_recipe

    checked = check_recipe(*load_recipe(recipe))
    click.echo(f"target: {checked.config.base_model}")
    for pair in checked.pairs:
        click.echo(f"vector {pair.name!r}: λ={pair.lam:g} × ({pair.grpo} − {pair.sft})")
    for note in checked.compatibility.notes():
        click.echo(f"note: {note}")
    click.echo("ok: the recipe and its models are compatible")


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--lambda", "lambdas", type=float, multiple=True,
              help="Override λ; repeat it for a sweep that reads the inputs once and writes OUT/lambda_<λ> per value.")
@click.option("--cuda", is_flag=True, help="Do the arithmetic on the GPU.")
@click.option("--read-to-gpu", is_flag=True, help="Read weights straight to the GPU (implies --cuda).")
@click.option("--out-shard-size", default="5B", show_default=True, help="Parameters per output shard.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty OUT once the new merge is complete.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def merge(recipe: Path, out: Path, lambdas, cuda: bool, read_to_gpu: bool, out_shard_size: str, overwrite: bool, quiet: bool):
    """Merge RECIPE into OUT with the streaming executor."""
    import logging

    from mergekit.common import parse_kmb
    from mergekit.options import MergeOptions

    from mergekit_reasoning import stream
    from mergekit_reasoning.recipe import check_recipe, load_recipe

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    options = MergeOptions(
        cuda=cuda or read_to_gpu,
        read_to_gpu=read_to_gpu,
        out_shard_size=parse_kmb(out_shard_size),
        quiet=quiet,
    )
    checked = check_recipe(*load_recipe(recipe))
    for note in checked.compatibility.notes():
        click.echo(f"warning: {note}", err=True)
    if lambdas:
        outs = [out / f"lambda_{lam:g}" for lam in lambdas]
        stream.merge(checked, outs, options, lambdas=list(lambdas), overwrite=overwrite)
    else:
        outs = stream.merge(checked, [out], options, overwrite=overwrite)
    for path in outs:
        click.echo(f"wrote {path}")


@main.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=None,
              help="Where to put the stand-in models and the merge (default: a temporary folder).")
@click.option("--shape", type=click.Choice(["tiny", "qwen2.5-1.5b"]), default="tiny", show_default=True)
def demo(workdir, shape):
    """Merge small stand-in models offline with the stock mergekit-yaml and check the result."""
    from mergekit_reasoning.demo import run_demo

    run_demo(workdir, shape=shape, echo=click.echo)


if __name__ == "__main__":
    main()
