"""The project's own executor: one recipe form, mergekit's plan, the streaming pass.

`run.merge` is the one entry point (read-ahead, output reservation, memory
budgets, sweeps and the manifest); every command that merges calls it.
"""
