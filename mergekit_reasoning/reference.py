"""An independent float64 reference for checking merged weights.

The demo and the tests compare every merged element with `target + Σ λ·(grpo − sft)`
computed in float64 and measure the distance in units of the output dtype's
last place (ulp): one correctly rounded result is at most half an ulp away.
"""

from typing import Sequence, Tuple

import torch

MANTISSA_BITS = {torch.bfloat16: 8, torch.float16: 11, torch.float32: 24, torch.float64: 53}


def exact_merge(target: torch.Tensor, vectors: Sequence[Tuple[torch.Tensor, torch.Tensor, float]]) -> torch.Tensor:
    result = target.to(torch.float64)
    for grpo, sft, lam in vectors:
        result = result + lam * (grpo.to(torch.float64) - sft.to(torch.float64))
    return result


def ulp(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spacing of `dtype` numbers around each float64 value."""
    _, exponent = torch.frexp(values.to(torch.float64))
    spacing = torch.ldexp(torch.ones_like(values, dtype=torch.float64), exponent - MANTISSA_BITS[dtype])
    smallest = torch.finfo(dtype).tiny * 2.0 ** (1 - MANTISSA_BITS[dtype])
    return spacing.clamp_min(smallest)


def ulp_error(merged: torch.Tensor, exact: torch.Tensor) -> float:
    """Largest distance of `merged` from `exact`, in ulps of `merged`'s dtype."""
    if merged.numel() == 0:
        return 0.0
    distance = (merged.to(torch.float64) - exact).abs()
    return float((distance / ulp(exact, merged.dtype)).max())


def error_bound(target: torch.Tensor, vectors, out_dtype: torch.dtype) -> torch.Tensor:
    """Per element: half an output ulp (the final rounding) plus the float32 (or
    float64) arithmetic error of three roundings on the magnitudes involved."""
    exact = exact_merge(target, vectors)
    compute = torch.float64 if out_dtype == torch.float64 or target.dtype == torch.float64 else torch.float32
    magnitude = target.to(torch.float64).abs()
    for grpo, sft, lam in vectors:
        magnitude = magnitude + abs(lam) * (grpo.to(torch.float64).abs() + sft.to(torch.float64).abs())
    return 0.5 * ulp(exact, out_dtype) + 3 * torch.finfo(compute).eps * magnitude


def bound_ratio(merged: torch.Tensor, target: torch.Tensor, vectors) -> float:
    """Largest |merged − exact| / error_bound: at most 1 for a correct merge."""
    if merged.numel() == 0:
        return 0.0
    distance = (merged.to(torch.float64) - exact_merge(target, vectors)).abs()
    return float((distance / error_bound(target, vectors, merged.dtype)).max())
