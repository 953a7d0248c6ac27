"""The fused CPU pass against the torch kernel, bit for bit, on hostile values.

Every test computes the same merge twice through `apply_vector_sets`: once as
shipped (the fused pass) and once with MERGEKIT_REASONING_KERNEL=torch (the torch
code it replaces), and requires identical bits. A NaN must be a NaN in the same
place; its payload is compared only in bf16 outputs, where torch on x86 always
writes 0xFFFF (in float32 and fp16 outputs torch's own payload differs between
the vectorised body and the scalar tail of a tensor).
"""

import logging
import os
import platform
import subprocess
import sys

import pytest
import torch
from helpers import bits

import mergekit_reasoning.method
from mergekit_reasoning.method import kernel
from mergekit_reasoning.method.kernel import apply_vector_sets, merge_tensor
from mergekit_reasoning.testing.reference import bound_ratio

pytest.importorskip("numba")

F32 = torch.float32
HALVES = [torch.bfloat16, torch.float16]
SPECIAL_BITS = [
    0x00000000,
    0x80000000,  # ±0
    0x00000001,
    0x80000001,
    0x007FFFFF,
    0x807FFFFF,  # float32 subnormals
    0x00800000,
    0x80800000,
    0x7F7FFFFF,
    0xFF7FFFFF,  # smallest normal, largest finite
    0x7F800000,
    0xFF800000,  # ±inf
    0x7FC00000,
    0xFFC00000,
    0x7FC12345,
    0x7F812345,
    0xFFA00001,  # quiet and signalling NaNs
    0x3F800000,
    0xBF800000,
    0x3F808000,
    0xBF808000,
    0x3F818000,
    0xBF818000,  # 1, bf16 ties at 1
    0x33000000,
    0x33000001,
    0x38800000,
    0x387FE000,
    0x477FEFFF,
    0x477FF000,  # fp16 edges
    0x00010000,
    0x80018000,
    0x00008000,  # bf16 subnormals and a bf16-subnormal tie
]
HALF_BITS = {
    torch.bfloat16: [0x7FC1, 0x7F81, 0xFF81, 0xFFFF, 0x0001, 0x8001, 0x007F, 0x0080],
    torch.float16: [0x7C01, 0x7E01, 0xFE00, 0xFDFF, 0x0001, 0x8001, 0x03FF, 0x0400, 0x7BFF],
}
LAMBDAS = [1.0, 0.0, -1.0, 0.5, -2.75, 0.1, 1e-50, 1 + 1e-12, 1e39, float("inf"), float("nan")]


def hostile(shape, dtype, seed):
    """A mix of special values, wide-range random values and values near 1 (for ties)."""
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.tensor(shape).prod())
    special = torch.tensor(SPECIAL_BITS, dtype=torch.int64).to(torch.int32).view(F32)
    pick = special[torch.randint(len(special), (n,), generator=gen)]
    wide = torch.randn(n, generator=gen, dtype=torch.float64) * torch.exp2(
        torch.randint(-140, 120, (n,), generator=gen).double()
    )
    near = 1 + torch.randint(-64, 64, (n,), generator=gen).double() / 256
    kind = torch.randint(3, (n,), generator=gen)
    out = torch.where(kind == 0, pick, torch.where(kind == 1, wide, near).to(F32)).to(dtype)
    if dtype in HALF_BITS:  # NaN payloads and subnormals of the narrow dtype itself
        raw = torch.tensor(HALF_BITS[dtype], dtype=torch.int32).to(torch.int16)
        patched = bits(out).clone()
        where = torch.randint(8, (n,), generator=gen) == 0
        patched[where] = raw[torch.randint(len(raw), (int(where.sum()),), generator=gen)]
        out = patched.view(dtype)
    return out.reshape(shape)


def with_torch_kernel(monkeypatch, *args, **kwargs):
    with monkeypatch.context() as patch:
        patch.setenv("MERGEKIT_REASONING_KERNEL", "torch")
        return apply_vector_sets(*args, **kwargs)


def assert_same_bits(fused, reference):
    assert len(fused) == len(reference)
    for a, b in zip(fused, reference):
        assert a.dtype == b.dtype and a.shape == b.shape
        nan_a, nan_b = torch.isnan(a.float()), torch.isnan(b.float())
        assert torch.equal(nan_a, nan_b)
        assert torch.equal(bits(a)[~nan_a], bits(b)[~nan_b])
        if a.dtype == torch.bfloat16 and platform.machine() in ("x86_64", "AMD64"):
            assert torch.equal(bits(a), bits(b))


@pytest.fixture
def counted(monkeypatch):
    """Counts calls of the fused pass, so a test knows it did not silently fall back."""
    from mergekit_reasoning.method import fused

    calls = []
    original = fused.merge

    def merge(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(fused, "merge", merge)
    return calls


@pytest.mark.parametrize(
    "dtypes",
    [(d, d, d) for d in [*HALVES, F32]]
    + [
        (torch.bfloat16, torch.float16, F32),
        (F32, torch.bfloat16, torch.bfloat16),
        (torch.float16, F32, torch.bfloat16),
    ],
)
@pytest.mark.parametrize("block", [1 << 24, 61])
def test_every_lambda_and_dtype_matches_the_torch_kernel(monkeypatch, counted, dtypes, block):
    target, grpo, sft = (hostile((23, 29), d, seed) for seed, d in enumerate(dtypes))
    sets = [[lam] for lam in LAMBDAS]
    out_dtype = torch.promote_types(torch.promote_types(dtypes[0], dtypes[1]), dtypes[2])
    for out in (out_dtype, None):
        fused = apply_vector_sets(target, [(grpo, sft)], sets, out_dtype=out, chunk_elements=block)
        reference = with_torch_kernel(monkeypatch, target, [(grpo, sft)], sets, out_dtype=out, chunk_elements=block)
        assert_same_bits(fused, reference)
    assert len(counted) == 2


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_ties_round_to_even_both_ways(monkeypatch, dtype, sign):
    # t + half an ulp of t: exact in float32, a tie in the output dtype; even t stays, odd t rounds away.
    mantissa = 8 if dtype == torch.bfloat16 else 11
    steps = torch.arange(0, 64, dtype=torch.float64)
    exponents = torch.tensor([-20.0, -3.0, 0.0, 7.0]) if dtype == torch.bfloat16 else torch.tensor([-13.0, 0.0, 9.0])
    t = (sign * (1 + steps / 2 ** (mantissa - 1))[None, :] * torch.exp2(exponents)[:, None]).to(dtype)
    half_ulp = torch.exp2(exponents - mantissa)[:, None].expand_as(t).to(dtype)
    zero = torch.zeros_like(t)
    for grpo, sft in ((half_ulp, zero), (zero, half_ulp)):
        sets = [[1.0], [-1.0], [3.0]]
        fused = apply_vector_sets(t, [(grpo, sft)], sets, out_dtype=dtype)
        assert_same_bits(fused, with_torch_kernel(monkeypatch, t, [(grpo, sft)], sets, out_dtype=dtype))
        # and against float64: round-to-nearest-even of the exact value
        exact = (t.double() + (grpo.double() - sft.double())).to(torch.float32).to(dtype)
        assert torch.equal(bits(fused[0]), bits(exact))


def test_inf_minus_inf_and_subnormals(monkeypatch):
    inf, nan = float("inf"), float("nan")
    tiny = torch.finfo(F32).tiny
    target = torch.tensor([0.0, -0.0, 1.0, -0.0, tiny / 2, -tiny / 4, inf, 0.0, nan], dtype=F32)
    grpo = torch.tensor([inf, -0.0, -inf, 0.0, tiny / 8, tiny / 8, 1.0, tiny / 2, 0.0], dtype=F32)
    sft = torch.tensor([inf, 0.0, -inf, 0.0, -tiny / 8, tiny / 4, -inf, tiny / 4, 1.0], dtype=F32)
    sets = [[1.0], [0.5], [0.0], [-1.0]]
    for out in (F32, torch.bfloat16, torch.float16):
        fused = apply_vector_sets(target.to(out), [(grpo, sft)], sets, out_dtype=out)
        assert_same_bits(fused, with_torch_kernel(monkeypatch, target.to(out), [(grpo, sft)], sets, out_dtype=out))
    (merged,) = apply_vector_sets(target, [(grpo, sft)], [[1.0]], out_dtype=F32)
    assert torch.isnan(merged[0]) and torch.isnan(merged[2])  # inf − inf
    assert bits(merged[1]) == bits(torch.tensor(-0.0))  # −0 + (−0 − 0) = −0
    assert torch.equal(
        merged[4:6], torch.tensor([tiny / 2 + tiny / 4, -tiny / 4 - tiny / 8], dtype=F32)
    )  # subnormals kept


def test_lambda_zero_returns_the_target_even_with_poisoned_donors(counted):
    target = hostile((16, 16), torch.bfloat16, 7)
    target = torch.where(torch.isnan(target), torch.zeros_like(target), target)  # torch writes a NaN as 0xFFFF
    grpo = torch.full_like(target, float("inf"))
    sft = torch.full_like(target, float("nan"))
    sets = [[0.0], [-0.0]]
    for result in apply_vector_sets(target, [(grpo, sft)], sets, out_dtype=torch.bfloat16, chunk_elements=5):
        assert torch.equal(bits(result), bits(target))
    assert counted


@pytest.mark.parametrize("rows", [(37, 30, 33), (37, 37, 40), (37, 0, 37), (5, 5, 5)])
def test_vocabulary_rows(monkeypatch, counted, rows):
    t_rows, g_rows, s_rows = rows
    target = hostile((t_rows, 7), torch.bfloat16, 1)
    grpo = hostile((g_rows, 7), torch.bfloat16, 2)
    sft = hostile((s_rows, 7), torch.bfloat16, 3)
    sets = [[0.3], [1.0]]
    for block in (1 << 24, 9):
        fused = apply_vector_sets(
            target, [(grpo, sft)], sets, vocab_axis=0, out_dtype=torch.bfloat16, chunk_elements=block
        )
        reference = with_torch_kernel(
            monkeypatch, target, [(grpo, sft)], sets, vocab_axis=0, out_dtype=torch.bfloat16, chunk_elements=block
        )
        assert_same_bits(fused, reference)
        shared = min(rows)  # the other rows are the target's (a NaN is written as the output dtype's NaN)
        kept, original = fused[0][shared:], target[shared:]
        assert torch.equal(torch.isnan(kept), torch.isnan(original))
        assert torch.equal(bits(kept)[~torch.isnan(kept)], bits(original)[~torch.isnan(original)])
    assert counted


def test_stored_vectors_and_several_pairs_in_a_sweep(monkeypatch, counted):
    target = hostile((19, 13), torch.bfloat16, 1)
    g1, s1 = hostile((19, 13), torch.bfloat16, 2), hostile((19, 13), torch.bfloat16, 3)
    vector = hostile((19, 13), F32, 4)  # a stored float32 vector: no sft
    g2, s2 = hostile((19, 13), torch.float16, 5), hostile((19, 13), torch.float16, 6)
    pairs = [(g1, s1), (vector, None), (g2, s2)]
    sets = [[1.0, 1.0, 1.0], [0.0, 0.5, -1.0], [0.0, 0.0, 0.0], [0.7, 0.0, 1e-3], [-1.0, 2.0, 0.0]]
    for block in (1 << 24, 17):
        fused = apply_vector_sets(target, pairs, sets, out_dtype=F32, chunk_elements=block)
        assert_same_bits(
            fused, with_torch_kernel(monkeypatch, target, pairs, sets, out_dtype=F32, chunk_elements=block)
        )
    assert counted


def test_a_float32_vector_gives_the_bits_of_its_pair():
    target, grpo, sft = (hostile((31, 9), torch.bfloat16, seed) for seed in (1, 2, 3))
    vector = grpo.float() - sft.float()
    for lam in (1.0, 0.5, -1.0):
        (from_pair,) = apply_vector_sets(target, [(grpo, sft)], [[lam]], out_dtype=F32)
        (from_vector,) = apply_vector_sets(target, [(vector, None)], [[lam]], out_dtype=F32)
        assert torch.equal(bits(from_pair), bits(from_vector))


@pytest.mark.parametrize("dtype", [*HALVES, F32])
def test_fused_against_float64_reference(counted, dtype):
    # Finite values across the range, each output within half an ulp (+ float32 arithmetic error).
    gen = torch.Generator().manual_seed(3)
    scale = torch.exp2(torch.randint(-30, 10, (48, 40), generator=gen).double())
    target = (torch.randn(48, 40, generator=gen, dtype=torch.float64) * scale).to(dtype)
    grpo = (target.double() + torch.randn(48, 40, generator=gen, dtype=torch.float64) * scale * 1e-2).to(dtype)
    sft = (target.double() + torch.randn(48, 40, generator=gen, dtype=torch.float64) * scale * 1e-2).to(dtype)
    for lam in (1.0, -1.0, 0.37):
        (merged,) = apply_vector_sets(target, [(grpo, sft)], [[lam]], out_dtype=dtype, chunk_elements=100)
        assert bound_ratio(merged, target, [(grpo, sft, lam)]) <= 1.0
    assert counted


def test_merge_tensor_output_dtype_is_the_promotion_of_its_inputs(counted):
    target = hostile((8, 8), torch.bfloat16, 1)
    donors = {"g": hostile((8, 8), F32, 2), "s": hostile((8, 8), torch.bfloat16, 3)}
    (merged,) = merge_tensor(
        target, donors, {"g": "grpo", "s": "sft"}, {"g": "v", "s": "v"}, {"g": 1.0, "s": 1.0}, name="w"
    )
    assert merged.dtype == F32 and counted


def test_float64_and_other_dtypes_stay_on_the_torch_path(counted):
    target = torch.randn(8, 8, dtype=torch.float64)
    apply_vector_sets(target, [(target, target)], [[1.0]], out_dtype=torch.float64)
    apply_vector_sets(target.float(), [(target.float(), target.to(torch.int32))], [[1.0]], out_dtype=F32)
    assert not counted


def test_without_numba_the_torch_kernel_answers_with_one_note(monkeypatch, caplog):
    target, grpo, sft = (hostile((11, 7), torch.bfloat16, seed) for seed in (1, 2, 3))
    fused = apply_vector_sets(target, [(grpo, sft)], [[0.5], [1.0]], out_dtype=torch.bfloat16)
    # As on a machine without numba: importing the fused module fails.
    monkeypatch.setattr(kernel, "_fused_module", None)
    monkeypatch.delattr(mergekit_reasoning.method, "fused")
    monkeypatch.setitem(sys.modules, "mergekit_reasoning.method.fused", None)
    with caplog.at_level(logging.WARNING, logger="mergekit_reasoning.method.kernel"):
        first = apply_vector_sets(target, [(grpo, sft)], [[0.5], [1.0]], out_dtype=torch.bfloat16)
        second = apply_vector_sets(target, [(grpo, sft)], [[0.5], [1.0]], out_dtype=torch.bfloat16)
    assert kernel._fused_module is False
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1 and len(caplog.records) == 1
    assert "numba" in caplog.records[0].message
    assert_same_bits(first, fused)
    assert_same_bits(second, fused)


def test_a_process_forked_after_a_merge_can_merge():
    # GNU OpenMP, numba's default threading layer without tbb, kills such a child.
    # The child compares with numpy: torch's own OpenMP pool is not usable after a fork.
    script = (
        "import os, signal, torch\n"
        "from mergekit_reasoning.method.kernel import apply_vector_sets\n"
        "x = torch.randn(50000).to(torch.bfloat16)\n"
        "apply_vector_sets(x, [(x, x)], [[0.5]], out_dtype=torch.bfloat16)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    signal.alarm(200)\n"  # a child that hangs ends itself, not an orphan left behind
        "    (y,) = apply_vector_sets(x, [(x, x)], [[0.5]], out_dtype=torch.bfloat16)\n"
        "    os._exit(0 if (y.view(torch.int16).numpy() == x.view(torch.int16).numpy()).all() else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "raise SystemExit(os.waitstatus_to_exitcode(status))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("shape", [(), (0, 4), (1,), (3, 0)])
def test_scalars_and_empty_tensors(monkeypatch, shape):
    target, grpo, sft = (hostile(shape, torch.bfloat16, seed) for seed in (1, 2, 3))
    sets = [[0.5], [1.0]]
    fused = apply_vector_sets(target, [(grpo, sft)], sets, out_dtype=torch.bfloat16)
    assert_same_bits(fused, with_torch_kernel(monkeypatch, target, [(grpo, sft)], sets, out_dtype=torch.bfloat16))


@pytest.mark.parametrize("lams", [[1.0], [0.37, -1.0, 0.0]])
def test_results_written_in_place_are_the_returned_bits(lams):
    """The mapped writer hands the kernel views into the output file: same bits as a new tensor."""
    gen = torch.Generator().manual_seed(11)
    target, grpo, sft = (torch.randn(300, 70, generator=gen).to(torch.bfloat16) for _ in range(3))
    sets = [[lam] for lam in lams]
    expected = apply_vector_sets(target, [(grpo, sft)], sets, out_dtype=torch.bfloat16)
    backing = torch.full((len(lams) * target.numel() + 5,), 7, dtype=torch.bfloat16)
    outs = [backing[1 + i * target.numel() : 1 + (i + 1) * target.numel()].view(target.shape) for i in range(len(lams))]
    got = apply_vector_sets(target, [(grpo, sft)], sets, out_dtype=torch.bfloat16, out=outs)
    assert all(g is o for g, o in zip(got, outs))
    for e, o in zip(expected, outs):
        assert torch.equal(bits(e), bits(o))
    assert backing[0].item() == 7 and backing[-4:].eq(7).all()  # nothing written outside the views


def test_in_place_output_in_another_dtype_is_rounded_as_to_would():
    gen = torch.Generator().manual_seed(12)
    target, grpo, sft = (torch.randn(64, 33, generator=gen).to(torch.bfloat16) for _ in range(3))
    roles = {"g": "grpo", "s": "sft"}
    args = (target, {"g": grpo, "s": sft}, roles, {"g": "reasoning", "s": "reasoning"}, {"g": 0.7, "s": 0.7})
    (plain,) = merge_tensor(*args, name="w")
    out = torch.empty(target.shape, dtype=torch.float16)
    merge_tensor(*args, name="w", out=[out])
    assert torch.equal(bits(out), bits(plain.to(torch.float16)))


def test_in_place_outputs_that_do_not_fit_are_refused():
    t = torch.zeros(4, 4, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="shape"):
        apply_vector_sets(t, [(t, t)], [[1.0]], out_dtype=torch.bfloat16, out=[torch.empty(16, dtype=torch.bfloat16)])
    with pytest.raises(ValueError, match="out_dtype"):
        apply_vector_sets(t, [(t, t)], [[1.0]], out_dtype=torch.bfloat16, out=[torch.empty(4, 4)])


def test_a_strided_in_place_output_gets_the_same_bits_through_torch():
    gen = torch.Generator().manual_seed(13)
    target, grpo, sft = (torch.randn(40, 30, generator=gen).to(torch.bfloat16) for _ in range(3))
    (expected,) = apply_vector_sets(target, [(grpo, sft)], [[0.3]], out_dtype=torch.bfloat16)
    strided = torch.empty(30, 40, dtype=torch.bfloat16).t()  # not contiguous: the fused pass declines it
    apply_vector_sets(target, [(grpo, sft)], [[0.3]], out_dtype=torch.bfloat16, out=[strided])
    assert torch.equal(bits(strided.contiguous()), bits(expected))
