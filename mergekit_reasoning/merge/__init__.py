"""The merge itself: the `reasoning_vector` method, its arithmetic and the streaming executor.

`method` is what stock mergekit finds by name; `kernel` (with `fused`, its one-pass
CPU form) is the arithmetic both executors share; `stream` is
`mergekit-reasoning merge`; `recipe`, `roles`, `compat` and `inputs` check a recipe
and its models before anything is written; `mergekit_private` is the one place
that calls mergekit's private helpers.
"""
