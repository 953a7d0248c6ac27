"""Reproducible merges, checked: `verify` a folder against its manifest, `regenerate`
the recipes whose text or inputs changed."""
