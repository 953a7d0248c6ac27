"""The arithmetic of a reasoning-vector merge, shared by every executor.

Both the mergekit method and the streaming executor call `apply_vectors`, so the
two paths agree bit for bit. Every step is one correctly rounded elementwise
operation (subtract, scale, add) in float32, or float64 when an input is float64;
nothing is fused, so CPU and CUDA round identically.
"""

from typing import List, Optional, Sequence, Tuple

import torch

Vector = Tuple[torch.Tensor, torch.Tensor, float]  # (grpo, sft, lambda)


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
) -> List[torch.Tensor]:
    """One merged tensor per set of λs (one λ per pair), computing each difference once.

    This is what makes a λ sweep cheap: the inputs are read and subtracted once,
    and each λ costs one scale and one add, rounded exactly as a single merge is.
    A pair `(vector, None)` is a stored difference: it is used as it is, which is
    why a vector extracted in float32 gives the same bits as its GRPO/SFT pair.
    """
    inputs = [x for pair in pairs for x in pair if x is not None]
    dtype = compute_dtype(target, *inputs)
    rows = None
    if vocab_axis is not None and pairs:
        rows = min(t.shape[vocab_axis] for t in (target, *inputs))
    results = [target.to(dtype=dtype, copy=True) for _ in lambda_sets]
    in_place = len(lambda_sets) == 1
    for index, (grpo, sft) in enumerate(pairs):
        lams = [lambdas[index] for lambdas in lambda_sets]
        if all(lam == 0 for lam in lams):
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
