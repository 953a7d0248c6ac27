"""`mergekit-reasoning recipes`: the recipes installed with the package, to list and to copy."""

import click


def _lam(value) -> str:
    return f"{value:+g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


@click.group(invoke_without_command=True)
@click.pass_context
def recipes(ctx):
    """List the shipped recipes (name, target, donors, λ); `recipes show NAME` prints one."""
    if ctx.invoked_subcommand is not None:
        return
    from mergekit_reasoning.core.shipped import recipes_dir, shipped_recipes

    found = shipped_recipes()
    click.echo(f"{len(found)} recipes in {recipes_dir()}; `mergekit-reasoning recipes show NAME` prints one.")
    for recipe in found:
        click.echo("")
        click.echo(f"{recipe.name}  (λ = {_lam(recipe.lam)})")
        width = max([len("target")] + [len(role) for role, _ in recipe.donors])
        click.echo(f"  {'target':<{width}}  {recipe.target}")
        for role, model in recipe.donors:
            click.echo(f"  {role:<{width}}  {model}")


@recipes.command()
@click.argument("name")
def show(name):
    """Print the shipped recipe NAME (e.g. qwen1.5b_add) exactly as installed, to copy and edit."""
    from mergekit_reasoning.core.shipped import shipped_recipe

    path = shipped_recipe(name)  # an unknown NAME: `Error: ...` naming the choices, exit status 1
    click.echo(path.read_text(encoding="utf-8"), nl=False)
