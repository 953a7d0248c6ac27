"""Small random Qwen2-architecture models that stand in for real checkpoints.

The hub is out of reach in tests and CI, so every check runs on models made here:
a target, an SFT model and a GRPO model that share one random initialisation and
differ by small seeded perturbations, the way fine-tunes of one base do. The
`qwen2.5-1.5b` and `qwen2.5-7b` shapes use the real hidden sizes and vocabulary
rows with fewer layers, so shape-dependent code meets what users will meet.
"""

from __future__ import annotations

import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import torch

from mergekit_reasoning.core.formats import SAFETENSORS_INDEX, shard_names


@dataclass(frozen=True)
class Shape:
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_rows: int
    tie_word_embeddings: bool


SHAPES: Dict[str, Shape] = {
    "tiny": Shape(64, 128, 4, 2, 512, True),
    "qwen2.5-1.5b": Shape(1536, 8960, 12, 2, 151936, True),
    "qwen2.5-7b": Shape(3584, 18944, 28, 4, 152064, False),
}


def tensor_shapes(
    shape: Shape, num_layers: int, *, vocab_rows: int, tied: bool
) -> Iterator[Tuple[str, Tuple[int, ...]]]:
    """Names and shapes of a Qwen2ForCausalLM checkpoint, in storage order."""
    h, kv = shape.hidden_size, shape.num_key_value_heads
    head_dim = h // shape.num_attention_heads
    yield "model.embed_tokens.weight", (vocab_rows, h)
    for i in range(num_layers):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (h,)
        yield p + "self_attn.q_proj.weight", (h, h)
        yield p + "self_attn.q_proj.bias", (h,)
        yield p + "self_attn.k_proj.weight", (kv * head_dim, h)
        yield p + "self_attn.k_proj.bias", (kv * head_dim,)
        yield p + "self_attn.v_proj.weight", (kv * head_dim, h)
        yield p + "self_attn.v_proj.bias", (kv * head_dim,)
        yield p + "self_attn.o_proj.weight", (h, h)
        yield p + "post_attention_layernorm.weight", (h,)
        yield p + "mlp.gate_proj.weight", (shape.intermediate_size, h)
        yield p + "mlp.up_proj.weight", (shape.intermediate_size, h)
        yield p + "mlp.down_proj.weight", (h, shape.intermediate_size)
    yield "model.norm.weight", (h,)
    if not tied:
        yield "lm_head.weight", (vocab_rows, h)


ROW_BLOCK = 4096  # rows drawn per generator: blocks are independent, so they fill in parallel


def _generator(name: str, seed: int, block: int) -> torch.Generator:
    # One generator per (tensor, row block) keeps a tensor's values independent of the
    # others and of the tensor's length, so models with different layer counts or
    # vocabularies share what they share.
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(f"{name}#{block}".encode()))


def _weight(
    name: str, size: Tuple[int, ...], seed: int, like_seed: Optional[int], noise: float, dtype: torch.dtype, pool
) -> torch.Tensor:
    """One stand-in weight: ones for norms, else N(0, 0.02²); plus a relative `noise`
    perturbation drawn from `like_seed`. Made in blocks of rows, rounded once to `dtype`,
    so the float32 work never holds more than a few blocks."""
    out = torch.empty(size, dtype=dtype)
    norm = name.endswith("norm.weight")

    def fill(block: int) -> None:
        rows = slice(block * ROW_BLOCK, min((block + 1) * ROW_BLOCK, size[0]))
        shape = (rows.stop - rows.start, *size[1:])
        if norm:
            weight = torch.ones(shape)
        else:
            weight = torch.randn(shape, generator=_generator(name, seed, block)).mul_(0.02)
        if like_seed is not None:
            weight.add_(torch.randn(shape, generator=_generator(name, like_seed, block)).mul_(0.02 * noise))
        out[rows] = weight.to(dtype)

    list(pool.map(fill, range(-(-size[0] // ROW_BLOCK))))
    return out


def write_standin(
    path: os.PathLike,
    *,
    shape: str = "tiny",
    num_layers: int = 2,
    seed: int = 0,
    like_seed: Optional[int] = None,
    noise: float = 0.01,
    tie_word_embeddings: Optional[bool] = None,
    vocab_rows: Optional[int] = None,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: Optional[int] = None,
    tokenizer: bool = True,
) -> Path:
    """Write a random Qwen2 model folder (config, safetensors, tokenizer) and return it.

    `seed` draws the shared initialisation; `like_seed`, when given, adds a small
    perturbation of relative size `noise` drawn from that seed, which is how the
    target, SFT and GRPO stand-ins come to differ. `vocab_rows` resizes the
    vocabulary (rows past the shared ones are fresh random rows);
    `max_shard_bytes` splits the weights into shards with an index, as the hub does.
    Each shard is written as soon as it is full, so memory holds one shard at most.
    """
    from safetensors.torch import save_file

    spec = SHAPES[shape]
    tied = spec.tie_word_embeddings if tie_word_embeddings is None else tie_word_embeddings
    rows = vocab_rows or spec.vocab_rows
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)

    written: list[Tuple[Path, list]] = []  # (file under a provisional name, its tensor names)
    shard: Dict[str, torch.Tensor] = {}
    shard_bytes = total = 0

    def flush() -> None:
        file = out / f"shard-{len(written) + 1}.partial"
        save_file(shard, file, metadata={"format": "pt"})
        written.append((file, list(shard)))
        shard.clear()

    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1), thread_name_prefix="standin") as pool:
        for name, size in tensor_shapes(spec, num_layers, vocab_rows=rows, tied=tied):
            tensor = _weight(name, size, seed, like_seed, noise, dtype, pool)
            nbytes = tensor.numel() * tensor.element_size()
            if max_shard_bytes and shard and shard_bytes + nbytes > max_shard_bytes:
                flush()
                shard_bytes = 0
            shard[name] = tensor
            shard_bytes += nbytes
            total += nbytes
            del tensor
        flush()

    names = shard_names(len(written))
    for (partial, _), file in zip(written, names):
        partial.rename(out / file)
    if len(written) > 1:
        weight_map = {name: file for (_, stored), file in zip(written, names) for name in stored}
        (out / SAFETENSORS_INDEX).write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )

    _write_config(out, spec, num_layers, rows, tied, dtype)
    if tokenizer:
        _write_tokenizer(out)
    return out


def write_trio(root: os.PathLike, *, shape: str = "tiny", num_layers: int = 2, **options) -> Dict[str, Path]:
    """Write target, SFT and GRPO stand-ins from one initialisation under `root`."""
    root = Path(root)
    return {
        role: write_standin(root / role, shape=shape, num_layers=num_layers, seed=0, like_seed=like, **options)
        for role, like in (("target", 1), ("sft", 2), ("grpo", 3))
    }


def _write_config(out: Path, spec: Shape, num_layers: int, rows: int, tied: bool, dtype: torch.dtype) -> None:
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "num_hidden_layers": num_layers,
        "max_window_layers": num_layers,
        "vocab_size": rows,
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "use_sliding_window": False,
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "dtype": str(dtype).removeprefix("torch."),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 0, "eos_token_id": 1, "do_sample": False}, indent=2)
    )


CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _write_tokenizer(out: Path) -> None:
    """A byte-level BPE tokenizer (a few hundred tokens) with a Qwen-style chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_end|>", "<|im_start|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [
        "Question: what is 12 plus 30? Answer: Let's think step by step. 12 + 30 = 42. The answer is 42.",
        "def add(a, b):\n    return a + b\n",
        "The mitochondria is the powerhouse of the cell.",
    ]
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))


def retarget(data: dict, target: str, by_role: Dict[str, str]) -> dict:
    """A copy of recipe `data` with its target and each donor replaced by role.

    This is how the demo and the tests run the shipped recipes on stand-ins.
    """
    out = dict(data, base_model=target)
    out["models"] = [dict(entry, model=by_role[(entry.get("parameters") or {})["role"]]) for entry in data["models"]]
    return out
