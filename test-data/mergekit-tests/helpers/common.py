"""The helpers mergekit's tests import as `tests.common`, written for this project.

mergekit's sdist ships its tests but not this module, and CI here cannot reach
GitHub, so this is a stand-in written from how the tests call it (not a copy of
mergekit's file): tiny random models saved as safetensors, and a merge run into a
temporary folder followed by the checks the tests rely on. The tests themselves
decide what passes; these helpers only build inputs and refuse an empty or broken
output.
"""

import tempfile
from pathlib import Path
from typing import Callable, Optional

import transformers
from mergekit.architecture import arch_info_for_config, get_architecture_info
from mergekit.config import MergeConfiguration
from mergekit.io.lazy_tensor_loader import LazyTensorLoader, ShardedTensorIndex
from mergekit.merge import MergeOptions, run_merge

# The shapes the tests assume: picollama's embeddings are (vocab_size, 32) with an untied
# head (test_embedding_truncation), gpt2size has 12 layers (test_gpt2_stack expects 24 from
# two copies of layers 0-12), and each model is one `model.safetensors` (test_merge_dtypes
# rewrites that file).
_LLAMA_TEXT = dict(hidden_size=32, intermediate_size=48, num_attention_heads=16, num_hidden_layers=2)


def _save(model_class, config, path) -> str:
    """Save a randomly initialised model as safetensors at `path`; return the path as mergekit takes it."""
    model_class(config).save_pretrained(path, safe_serialization=True)
    return str(path)


def make_picollama(path, vocab_size: int = 64) -> str:
    """A two-layer Llama, hidden size 32, untied head."""
    return _save(transformers.LlamaForCausalLM, transformers.LlamaConfig(vocab_size=vocab_size, **_LLAMA_TEXT), path)


def make_picogranite(path, vocab_size: int = 64) -> str:
    """A two-layer IBM Granite, hidden size 32."""
    config = transformers.GraniteConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_hidden_layers=2,
    )
    return _save(transformers.GraniteForCausalLM, config, path)


def make_gpt2size(path) -> str:
    """GPT-2 small's shapes (12 layers, width 768, 50257 tokens): the one test that needs a real size."""
    config = transformers.GPT2Config(n_layer=12, n_head=12, n_embd=768, n_ctx=1024, n_positions=1024, vocab_size=50257)
    return _save(transformers.GPT2LMHeadModel, config, path)


def make_picoLlaVa(path) -> str:  # noqa: N802 (the name the tests import)
    """A LLaVA with a two-layer CLIP vision tower and picollama's text model: a multi-module architecture."""
    vision = transformers.CLIPVisionConfig(
        image_size=32, patch_size=4, num_hidden_layers=2, num_attention_heads=2, hidden_size=64, intermediate_size=128
    )
    text = transformers.LlamaConfig(vocab_size=64, **_LLAMA_TEXT)
    config = transformers.LlavaConfig(vision_config=vision, text_config=text, image_seq_length=16)
    return _save(transformers.LlavaForConditionalGeneration, config, path)


def run_and_check_merge(
    config: MergeConfiguration,
    check_nan: bool = True,
    check_tensors: bool = True,
    validate: Optional[Callable[[str], None]] = None,
    index_json_name: Optional[str] = None,
    auto_arch: bool = False,
) -> None:
    """Merge `config` with mergekit's defaults into a temporary folder, check the output, then `validate` it.

    The output must hold weights (an index or a single file) and a config; with
    `check_nan`, no tensor may hold a NaN; with `check_tensors`, every required weight
    of the output's architecture (or, with `auto_arch`, the one mergekit infers from
    the inputs) must be stored, under its name or an alias.
    """
    index_name = index_json_name or "model.safetensors.index.json"
    with tempfile.TemporaryDirectory() as out:
        run_merge(config, out_path=out, options=MergeOptions())
        weights = [Path(out, index_name), Path(out, index_name.removesuffix(".index.json"))]
        assert any(p.exists() for p in weights), f"the merge wrote no weights ({' or '.join(map(str, weights))})"
        assert Path(out, "config.json").exists(), "the merge wrote no config.json"
        if check_nan:
            _refuse_nan(out)
        if check_tensors:
            _refuse_missing_weights(config, out, auto_arch)
        if validate is not None:
            validate(out)


def _refuse_nan(out: str) -> None:
    loader = LazyTensorLoader.from_disk(out, lazy_unpickle=False)
    for name in sorted(loader.index.tensor_paths):
        assert not loader.get_tensor(name).isnan().any(), f"output tensor {name} holds NaN"


def _refuse_missing_weights(config: MergeConfiguration, out: str, auto_arch: bool) -> None:
    model_config = transformers.AutoConfig.from_pretrained(out)
    arch = get_architecture_info(config, MergeOptions()) if auto_arch else arch_info_for_config(model_config)
    stored = ShardedTensorIndex.from_disk(out).tensor_paths
    for weight in arch.all_weights(model_config):
        if weight.optional or weight.name in stored or any(alias in stored for alias in weight.aliases):
            continue
        raise RuntimeError(f"output missing tensor {weight.name}")


__all__ = [
    "make_gpt2size",
    "make_picoLlaVa",
    "make_picogranite",
    "make_picollama",
    "run_and_check_merge",
]
