"""An independent float64 reference for checking merged weights.

The demo and the tests compare every merged element with `target + Σ λ·(grpo − sft)`
computed in float64 and measure the distance in units of the output dtype's
last place (ulp): one correctly rounded result is at most half an ulp away.

The comparisons run over blocks of elements, so checking a 150k-row embedding
costs a few float64 blocks of memory, not several float64 copies of the matrix.
"""

from typing import Iterator, List, Sequence, Tuple

import torch

from mergekit_reasoning.core.reductions import BLOCK as BLOCK_ELEMENTS

_EXPONENT_BITS = 0x7FF0000000000000

Vectors = Sequence[Tuple[torch.Tensor, torch.Tensor, float]]


def exact_merge(target: torch.Tensor, vectors: Vectors) -> torch.Tensor:
    result = target.to(torch.float64)
    for grpo, sft, lam in vectors:
        result = result + lam * (grpo.to(torch.float64) - sft.to(torch.float64))
    return result


def ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spacing of `dtype` numbers around each float64 value.

    For |x| in [2^e, 2^(e+1)) the spacing is 2^(e+1−p), p being the mantissa
    bits; 2^e is x with its sign and mantissa bits cleared, so no logarithm is
    taken. Zero and values below the normal range get the smallest spacing.
    """
    power = (values.to(torch.float64).view(torch.int64) & _EXPONENT_BITS).view(torch.float64)
    step = torch.finfo(dtype).eps  # 2^(1−p)
    return (power * step).clamp_min(torch.finfo(dtype).tiny * step)


def ulp_error(merged: torch.Tensor, exact: torch.Tensor) -> float:
    """Largest distance of `merged` from `exact`, in ulps of `merged`'s dtype."""
    if merged.numel() == 0:
        return 0.0
    distance = (merged.to(torch.float64) - exact).abs()
    return float((distance / ulp(exact, merged.dtype)).max())


def error_bound(target: torch.Tensor, vectors: Vectors, out_dtype: torch.dtype) -> torch.Tensor:
    """Per element: half an output ulp (the final rounding) plus the float32 (or
    float64) arithmetic error of three roundings on the magnitudes involved."""
    exact = exact_merge(target, vectors)
    compute = torch.float64 if out_dtype == torch.float64 or target.dtype == torch.float64 else torch.float32
    magnitude = target.to(torch.float64).abs()
    for grpo, sft, lam in vectors:
        magnitude = magnitude + abs(lam) * (grpo.to(torch.float64).abs() + sft.to(torch.float64).abs())
    return 0.5 * ulp(exact, out_dtype) + 3 * torch.finfo(compute).eps * magnitude


def bound_ratio(merged: torch.Tensor, target: torch.Tensor, vectors: Vectors) -> float:
    """Largest |merged − exact| / error_bound: at most 1 for a correct merge."""
    worst = 0.0
    for m, t, v in _blocks(merged, target, vectors):
        exact, magnitude = _exact_and_magnitude(t, v)
        compute = torch.float64 if torch.float64 in (m.dtype, t.dtype) else torch.float32
        bound = ulp(exact, m.dtype).mul_(0.5).add_(magnitude.mul_(3 * torch.finfo(compute).eps))
        worst = max(worst, float(m.to(torch.float64).sub_(exact).abs_().div_(bound).max()))
    return worst


def compare_with_exact(merged: torch.Tensor, target: torch.Tensor, vectors: Vectors) -> Tuple[float, int]:
    """(largest error in ulps of `merged`'s dtype, how many elements equal the
    correctly rounded float64 result), block by block."""
    worst, equal = 0.0, 0
    for m, t, v in _blocks(merged, target, vectors):
        exact, _ = _exact_and_magnitude(t, v)
        equal += int((m == exact.to(m.dtype)).sum())
        worst = max(worst, float(m.to(torch.float64).sub_(exact).abs_().div_(ulp(exact, m.dtype)).max()))
    return worst, equal


def _exact_and_magnitude(target: torch.Tensor, vectors: Vectors) -> Tuple[torch.Tensor, torch.Tensor]:
    """`exact_merge` and |target| + Σ |λ|·(|grpo| + |sft|) on one block, each input
    converted to float64 once and the arithmetic done in place."""
    exact = target.to(torch.float64)
    magnitude = exact.abs()
    for grpo, sft, lam in vectors:
        g, s = grpo.to(torch.float64), sft.to(torch.float64)
        exact.add_(torch.sub(g, s).mul_(lam))
        magnitude.add_(g.abs_().add_(s.abs_()).mul_(abs(lam)))
    return exact, magnitude


def _blocks(
    merged: torch.Tensor, target: torch.Tensor, vectors: Vectors
) -> Iterator[Tuple[torch.Tensor, torch.Tensor, List]]:
    """Matching flat blocks of the merged tensor, the target and every vector's inputs."""
    for tensor in (target, *(x for g, s, _ in vectors for x in (g, s))):
        if tensor.shape != merged.shape:
            raise ValueError(
                f"reference inputs must have the merged shape {tuple(merged.shape)}, got {tuple(tensor.shape)}"
            )
    flat = lambda t: t.reshape(-1)  # noqa: E731
    m, t = flat(merged), flat(target)
    v = [(flat(g), flat(s), lam) for g, s, lam in vectors]
    for start in range(0, m.numel(), BLOCK_ELEMENTS):
        block = slice(start, start + BLOCK_ELEMENTS)
        yield m[block], t[block], [(g[block], s[block], lam) for g, s, lam in v]
