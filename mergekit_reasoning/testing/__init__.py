"""Test support shipped for `mergekit-reasoning demo`: stand-in models and a float64 reference.

Only the command line's `demo` imports it; the import-direction test keeps every
other product module away from it.
"""
