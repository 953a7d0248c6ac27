"""The arithmetic against an independent float64 reference."""

import pytest
import torch
from helpers import bits

from mergekit_reasoning.method.kernel import apply_vector_sets, apply_vectors
from mergekit_reasoning.testing.reference import bound_ratio, exact_merge, ulp_error


def randn(*shape, seed, dtype, scale=0.02):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def trio(dtype, shape=(64, 48)):
    target = randn(*shape, seed=1, dtype=dtype)
    grpo = (target.double() + randn(*shape, seed=2, dtype=torch.float64, scale=1e-3)).to(dtype)
    sft = (target.double() + randn(*shape, seed=3, dtype=torch.float64, scale=1e-3)).to(dtype)
    return target, grpo, sft


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("lam", [1.0, 0.5, -1.0, 2.75, 1e-3])
def test_one_rounding_from_float64(dtype, lam):
    target, grpo, sft = trio(dtype)
    merged = apply_vectors(target, [(grpo, sft, lam)]).to(dtype)
    # Within half an output ulp of the float64 value, plus float32 arithmetic error.
    assert bound_ratio(merged, target, [(grpo, sft, lam)]) <= 1.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_outputs_are_correctly_rounded_almost_everywhere(dtype):
    target, grpo, sft = trio(dtype, shape=(256, 256))
    merged = apply_vectors(target, [(grpo, sft, 0.5)]).to(dtype)
    exact = exact_merge(target, [(grpo, sft, 0.5)])
    assert ulp_error(merged, exact) <= 0.5 + 1e-6


def test_arithmetic_runs_in_float32_for_half_inputs():
    target, grpo, sft = trio(torch.bfloat16)
    assert apply_vectors(target, [(grpo, sft, 1.0)]).dtype == torch.float32
    assert apply_vectors(target.double(), [(grpo.double(), sft.double(), 1.0)]).dtype == torch.float64


def test_lambda_zero_is_the_target_bit_for_bit():
    target, grpo, sft = trio(torch.bfloat16)
    target[0, 0] = -0.0
    grpo[0, 1] = float("inf")  # would poison 0·v if λ = 0 were multiplied through
    merged = apply_vectors(target, [(grpo, sft, 0.0)]).to(torch.bfloat16)
    assert torch.equal(bits(merged), bits(target))


def test_negative_lambda_subtracts():
    target, grpo, sft = trio(torch.float32)
    plus = apply_vectors(target, [(grpo, sft, 1.0)])
    minus = apply_vectors(target, [(grpo, sft, -1.0)])
    torch.testing.assert_close(plus - target, target - minus, rtol=0, atol=1e-7)


def test_several_vectors_sum():
    target, grpo, sft = trio(torch.bfloat16)
    _, grpo2, sft2 = trio(torch.bfloat16, shape=(64, 48))
    grpo2 = (grpo2.double() + 1e-3).to(torch.bfloat16)
    vectors = [(grpo, sft, 0.7), (grpo2, sft2, -0.3)]
    merged = apply_vectors(target, vectors).to(torch.bfloat16)
    assert bound_ratio(merged, target, vectors) <= 1.0


def test_vocabulary_rows_shared_by_all_get_the_vector_the_rest_keep_the_target():
    target = randn(10, 4, seed=1, dtype=torch.float32)
    grpo = randn(8, 4, seed=2, dtype=torch.float32)
    sft = randn(9, 4, seed=3, dtype=torch.float32)
    merged = apply_vectors(target, [(grpo, sft, 1.0)], vocab_axis=0)
    assert merged.shape == target.shape
    torch.testing.assert_close(merged[:8], target[:8] + (grpo - sft[:8]), rtol=0, atol=1e-7)
    assert torch.equal(merged[8:], target[8:])


def test_a_sweep_equals_separate_merges_bit_for_bit():
    target, grpo, sft = trio(torch.bfloat16)
    lams = [-1.0, 0.0, 0.3, 1.0, 1.7]
    swept = apply_vector_sets(target, [(grpo, sft)], [[lam] for lam in lams])
    for lam, result in zip(lams, swept):
        single = apply_vectors(target, [(grpo, sft, lam)])
        assert torch.equal(bits(result), bits(single)), lam


def test_inputs_are_not_modified():
    target, grpo, sft = trio(torch.float32)
    copies = [t.clone() for t in (target, grpo, sft)]
    apply_vectors(target, [(grpo, sft, 0.5)])
    for original, copy in zip((target, grpo, sft), copies):
        assert torch.equal(original, copy)


@pytest.mark.parametrize("shape, grpo_rows, sft_rows", [((37, 5), 37, 37), ((37, 5), 30, 33), ((41,), 41, 41)])
def test_blockwise_rounding_equals_whole_tensor_rounding(shape, grpo_rows, sft_rows):
    target = randn(*shape, seed=1, dtype=torch.bfloat16)
    grpo = randn(grpo_rows, *shape[1:], seed=2, dtype=torch.bfloat16)
    sft = randn(sft_rows, *shape[1:], seed=3, dtype=torch.bfloat16)
    sets = [[0.3], [1.0], [-2.0]]
    axis = 0 if grpo_rows != shape[0] or sft_rows != shape[0] else None
    whole = [r.to(torch.bfloat16) for r in apply_vector_sets(target, [(grpo, sft)], sets, vocab_axis=axis)]
    blocks = apply_vector_sets(target, [(grpo, sft)], sets, vocab_axis=axis, out_dtype=torch.bfloat16, chunk_elements=7)
    for a, b in zip(whole, blocks):
        assert torch.equal(bits(a), bits(b))
