"""Plugin discovery: stock mergekit finds the method; start-up stays free."""

import subprocess
import sys


def python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_interpreter_start_imports_neither_torch_nor_mergekit():
    loaded = python(
        "import sys; print(sorted(m for m in ('torch', 'mergekit', 'mergekit_reasoning', "
        "'_mergekit_reasoning_startup') if m in sys.modules))"
    )
    # the hook is installed, and it is the only thing that is
    assert loaded == "['_mergekit_reasoning_startup']"


def test_stock_registry_finds_the_method_once_mergekit_loads():
    out = python(
        "import mergekit.merge_methods as m; "
        "print(m.get('reasoning_vector').spec.name, sum(x.spec.name == 'reasoning_vector' for x in m.registered_methods()))"
    )
    assert out == "reasoning_vector 1"


def test_importing_the_method_directly_registers_it_once():
    out = python(
        "import mergekit_reasoning.method.reasoning_vector, mergekit.merge_methods.registry as r; "
        "print(sum(x.spec.name == 'reasoning_vector' for x in r.registered_methods()))"
    )
    assert out == "1"


def test_startup_hook_costs_a_fraction_of_a_millisecond():
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True, check=True
    )
    rows = [line for line in done.stderr.splitlines() if "_mergekit_reasoning_startup" in line]
    assert len(rows) == 1
    cumulative_us = int(rows[0].split("|")[1])
    assert cumulative_us < 1000, rows[0]
