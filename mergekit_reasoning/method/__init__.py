"""The merge method: roles, compatibility checks, the arithmetic and its mergekit spec.

`reasoning_vector` is what stock mergekit finds by name; `kernel` (with `fused`,
its one-pass CPU form) is the arithmetic both executors share; `roles`, `compat`,
`models` and `vector_format` check a recipe's models before anything is written.
"""
