"""The arithmetic of a reasoning-vector merge, shared by every executor.

Both the mergekit method and the streaming executor call `merge_tensor`, so the
two paths agree bit for bit. Every step is one correctly rounded elementwise
operation (subtract, scale, add) in float32, or float64 when an input is float64;
nothing is contracted into a multiply-add, so CPU and CUDA round identically.

On the CPU, bf16/fp16/fp32 inputs go through `fused.py`: the same operations in
one pass per block, on all cores (numba). float64, CUDA, other dtypes, and a
machine without numba use the torch code below, which gives the same bits.
`MERGEKIT_REASONING_KERNEL=torch` forces the torch code (for comparisons).
"""

import logging
import math
import os
from typing import Hashable, List, Mapping, Optional, Sequence, Tuple

import torch

from mergekit_reasoning.core.errors import RecipeError
from mergekit_reasoning.method.roles import lambda_problem, pair_donors

Vector = Tuple[torch.Tensor, torch.Tensor, float]  # (grpo, sft, lambda)
CHUNK_ELEMENTS = 1 << 24  # 64 MB of float32 per block
LOG = logging.getLogger(__name__)
_fused_module = None  # the module once imported; False when numba is missing


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32 at least; float64 when any input already is."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def apply_vectors(
    target: torch.Tensor,
    vectors: Sequence[Vector],
    *,
    vocab_axis: Optional[int] = None,
) -> torch.Tensor:
    """Return `target + Σ λ·(grpo − sft)` in the compute dtype (a new tensor).

    With `vocab_axis`, inputs may differ in length along that axis only: the
    vectors apply to the rows all inputs share and the target keeps its other
    rows. A zero λ contributes nothing, so λ = 0 returns the target unchanged.
    """
    pairs = [(grpo, sft) for grpo, sft, _ in vectors]
    (result,) = apply_vector_sets(target, pairs, [[lam for _, _, lam in vectors]], vocab_axis=vocab_axis)
    return result


def apply_vector_sets(
    target: torch.Tensor,
    pairs: Sequence[Tuple[torch.Tensor, Optional[torch.Tensor]]],
    lambda_sets: Sequence[Sequence[float]],
    *,
    vocab_axis: Optional[int] = None,
    out_dtype: Optional[torch.dtype] = None,
    chunk_elements: int = CHUNK_ELEMENTS,
    out: Optional[Sequence[torch.Tensor]] = None,
) -> List[torch.Tensor]:
    """One merged tensor per set of λs (one λ per pair), computing each difference once.

    This is what makes a λ sweep cheap: the inputs are read and subtracted once,
    and each λ costs one scale and one add, rounded exactly as a single merge is.
    A pair `(vector, None)` is a stored difference: it is used as it is, which is
    why a vector extracted in float32 gives the same bits as its GRPO/SFT pair.

    Without `out_dtype` the results stay in the compute dtype. With it, the work
    runs in blocks of rows rounded straight into the outputs, so a 150k-row
    embedding never exists in float32 whole; elementwise, the bits are the same.
    `out` (one tensor per λ set, in `out_dtype`) receives the results in place.
    """
    if out is not None:
        if out_dtype is None or len(out) != len(lambda_sets) or any(o.dtype != out_dtype for o in out):
            raise ValueError("out needs out_dtype and one tensor of that dtype per λ set")
        if any(o.shape != target.shape for o in out):
            raise ValueError(f"out must have the target's shape {tuple(target.shape)}")
    inputs = [x for pair in pairs for x in pair if x is not None]
    dtype = compute_dtype(target, *inputs)
    shared = None
    if vocab_axis is not None and pairs:
        shared = min(t.shape[vocab_axis] for t in (target, *inputs))
    fused = _fused_merge(target, pairs, lambda_sets, inputs, dtype, shared, vocab_axis, out_dtype, chunk_elements, out)
    if fused is not None:
        return fused
    if out is not None:
        results = apply_vector_sets(
            target, pairs, lambda_sets, vocab_axis=vocab_axis, out_dtype=out_dtype, chunk_elements=chunk_elements
        )
        for destination, result in zip(out, results):
            destination.copy_(result)
        return list(out)
    if out_dtype is None or target.dim() == 0 or vocab_axis not in (None, 0):
        results = _merge_block(target, pairs, lambda_sets, dtype, shared, vocab_axis)
        return results if out_dtype is None else [r.to(out_dtype) for r in results]

    outputs = [torch.empty(target.shape, dtype=out_dtype, device=target.device) for _ in lambda_sets]
    step = max(1, chunk_elements // max(1, math.prod(target.shape[1:])))  # target[0] fails with no rows
    for start in range(0, target.shape[0], step):
        stop = min(start + step, target.shape[0])
        if shared is None:
            block_pairs = [(g[start:stop], None if s is None else s[start:stop]) for g, s in pairs]
            rows = None
        else:  # the vector covers the first `shared` rows only
            rows = max(0, min(stop, shared) - start)
            block_pairs = [(g[start : start + rows], None if s is None else s[start : start + rows]) for g, s in pairs]
        block = _merge_block(target[start:stop], block_pairs, lambda_sets, dtype, rows, 0 if rows is not None else None)
        for output, merged in zip(outputs, block):
            output[start:stop] = merged
        del block
    return outputs


def _fused_merge(target, pairs, lambda_sets, inputs, dtype, shared, vocab_axis, out_dtype, chunk_elements, out=None):
    """The fused CPU pass when it applies (see the module docstring), else None."""
    if dtype != torch.float32 or os.environ.get("MERGEKIT_REASONING_KERNEL", "fused") == "torch":
        return None
    fused = fused_module()
    out_dtype = out_dtype or dtype
    if not fused or not fused.supports([target, *inputs, *(out or [])], out_dtype):
        return None
    if out is not None and not all(o.is_contiguous() for o in out):
        return None
    if shared is None:
        if any(t.shape != target.shape for t in inputs):
            return None  # the torch code broadcasts or names the mismatch, as it always has
    elif vocab_axis != 0 or target.dim() == 0 or any(t.shape[1:] != target.shape[1:] for t in inputs):
        return None
    block = min(fused.BLOCK, max(1, chunk_elements))
    return fused.merge(target, pairs, lambda_sets, out_dtype, shared, block=block, outputs=out)


def fused_module():
    """`mergekit_reasoning.method.fused`, or None (noted once) where numba cannot be imported."""
    global _fused_module
    if _fused_module is None:
        try:
            from mergekit_reasoning.method import fused
        except (ImportError, OSError) as error:  # OSError: llvmlite's library failed to load
            LOG.warning("numba is not available (%s): merging with the torch kernel, same bits, slower", error)
            fused = False
        _fused_module = fused
    return _fused_module or None


def _merge_block(target, pairs, lambda_sets, dtype, rows, vocab_axis) -> List[torch.Tensor]:
    """The arithmetic itself, on a whole tensor or a block of its rows."""
    results = [target.to(dtype=dtype, copy=True) for _ in lambda_sets]
    in_place = len(lambda_sets) == 1
    for index, (grpo, sft) in enumerate(pairs):
        lams = [lambdas[index] for lambdas in lambda_sets]
        if all(lam == 0 for lam in lams) or rows == 0:
            continue
        if rows is not None:
            grpo = grpo.narrow(vocab_axis, 0, rows)
            sft = None if sft is None else sft.narrow(vocab_axis, 0, rows)
        delta = grpo.to(dtype=dtype, copy=True)
        if sft is not None:
            delta.sub_(sft)
        for result, lam in zip(results, lams):
            if lam == 0:
                continue
            scaled = delta
            if lam != 1:
                # λ is rounded to the compute dtype first, so the product is the same
                # correctly rounded value whether a device multiplies in float or double.
                lam = torch.tensor(lam, dtype=dtype).item()
                scaled = delta.mul_(lam) if in_place else delta.mul(lam)
            out = result if rows is None else result.narrow(vocab_axis, 0, rows)
            out.add_(scaled)
            del scaled
        del delta
    return results


def merge_tensor(
    target: torch.Tensor,
    donors: Mapping[Hashable, torch.Tensor],
    roles: Mapping[Hashable, str],
    vectors: Mapping[Hashable, str],
    lambdas: Mapping[Hashable, float],
    *,
    name: str,
    vocab_axis: Optional[int] = None,
    lambda_values: Optional[Sequence[float]] = None,
    out: Optional[Sequence[torch.Tensor]] = None,
) -> List[torch.Tensor]:
    """One output tensor, in the target's dtype, for both executors.

    Returns one tensor for the recipe's λ, or one per value of `lambda_values`
    (a sweep, where each value replaces every vector's λ). With `out`, the results
    are written into those tensors and converted to their dtype exactly as
    `.to(dtype)` would convert the returned ones.
    """
    pairs = pair_donors(list(donors), roles, vectors, lambdas, where=name)
    for label, tensor in (("the target", target), *((f"model {m}", t) for m, t in donors.items())):
        if not tensor.is_floating_point():
            raise RecipeError(
                f"tensor {name} of {label} is {str(tensor.dtype).removeprefix('torch.')}; only float tensors are merged"
            )
    for lam in list(lambda_values or []):
        problem = lambda_problem(lam)
        if problem is not None:
            raise RecipeError(f"tensor {name}: {problem}")
    if lambda_values is None:
        lambda_sets = [[pair.lam for pair in pairs]]
    else:
        lambda_sets = [[lam] * len(pairs) for lam in lambda_values]
    # Round to the inputs' common dtype, as mergekit's executor aligns them before a method runs.
    out_dtype = target.dtype
    for tensor in donors.values():
        out_dtype = torch.promote_types(out_dtype, tensor.dtype)
    vector_pairs = [(donors[p.grpo], None if p.sft is None else donors[p.sft]) for p in pairs]
    if out is not None and any(o.dtype != out_dtype for o in out):
        # Rounded to the inputs' dtype first, then to the asked one: two roundings, as `.to()` after.
        results = apply_vector_sets(target, vector_pairs, lambda_sets, vocab_axis=vocab_axis, out_dtype=out_dtype)
        for destination, result in zip(out, results):
            destination.copy_(result)
        return list(out)
    return apply_vector_sets(target, vector_pairs, lambda_sets, vocab_axis=vocab_axis, out_dtype=out_dtype, out=out)
