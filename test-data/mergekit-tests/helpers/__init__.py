"""mergekit's tests import their helpers as the package `tests`; see common.py."""
