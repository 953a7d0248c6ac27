"""Functions the task YAMLs name with `!function`: data loaders and the HumanEval metric.

lm-eval calls `custom_dataset` with the TaskManager metadata (which carries
`data_dir`) plus the task's `dataset_kwargs`; an empty `data_dir` means the hub.
"""

from mergekit_reasoning.bench import data
from mergekit_reasoning.bench.adversarial import perturb
from mergekit_reasoning.bench.sandbox import check_program


def load_gsm8k(data_dir=None, adversarial=False, adversarial_seed=0, **_):
    ds = data.load("gsm8k", data_dir)
    if adversarial:
        ds["test"] = perturb(ds["test"], adversarial_seed)
    return ds


def load_bbh(data_dir=None, subset=None, **_):
    return data.load("bbh", data_dir, subset)


def load_humaneval(data_dir=None, **_):
    return data.load("humaneval", data_dir)


def load_sciq(data_dir=None, **_):
    return data.load("sciq", data_dir)


def humaneval_reference(doc):
    """What the trusted checker runs, straight from the dataset: the prompt (helpers some
    tests call, e.g. `poly`), the test and the entry point's name."""
    return {"prompt": doc["prompt"], "test": doc["test"], "entry_point": doc["entry_point"]}


def build_predictions(resps, docs):
    """Full programs: the prompt (signature and docstring) followed by each completion."""
    return [[doc["prompt"] + r for r in resp] for resp, doc in zip(resps, docs)]


def pass_at_1(references, predictions, **_):
    """Greedy pass@1 for one problem: the share of its programs that pass.

    Each program (prompt + completion) runs in a sandbox and only answers calls; the
    dataset's test runs in a separate trusted checker that alone decides the verdict.
    """
    (reference,), (programs,) = references, predictions
    if isinstance(programs, str):
        programs = [programs]
    prompt, test, entry_point = (str(reference[k]) for k in ("prompt", "test", "entry_point"))
    return sum(check_program(str(p), prompt, test, entry_point).passed for p in programs) / max(len(programs), 1)
