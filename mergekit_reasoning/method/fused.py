"""The CPU merge in one pass per block of elements, compiled with numba.

`kernel.py`'s torch path makes a separate pass over memory for each step (widen,
subtract, scale, add, round). This does the same correctly rounded float32
operations element by element, in cache-sized blocks spread over all cores, and
writes each output dtype directly, for one λ or every λ of a sweep at once.

It gives the torch kernel's bits:
- bf16 and fp16 inputs are widened exactly (bf16 by a shift; fp16 as x86's F16C
  does, which quiets a signalling NaN);
- the difference, the product and the sum are separate float32 operations
  (numba without `fastmath`, so LLVM never contracts them into a fused multiply-add);
- float32 is rounded to bf16 or fp16 to nearest even by integer arithmetic, with
  inf kept and NaN written as torch writes it on x86 (bf16: 0xFFFF; fp16: sign,
  quiet bit and the top payload bits, as F16C).
A NaN stays a NaN in the same place. Which NaN payload survives when NaNs meet
in float32 or fp16 output is not specified: torch's own answer differs between
the vectorised body and the scalar tail of a tensor, and between CPU and GPU.
`tests/test_fused.py` checks all of this against torch; every float32 bit pattern
was checked for both roundings (benchmarks/RESULTS.md).

One compiled signature serves every call: inputs and outputs are passed as raw
addresses with a dtype code, so a new pair count or sweep size never recompiles.
The compiled code is cached on disk (numba's `cache=True`: next to this module,
or under NUMBA_CACHE_DIR when that is set; where neither is writable numba uses
a per-user cache folder). Threads: all cores, or NUMBA_NUM_THREADS.
"""

import os
import threading
from typing import List, Optional, Sequence, Tuple

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import carray, njit, prange, types
from numba.extending import intrinsic

if "NUMBA_THREADING_LAYER" not in os.environ:
    # numba's default is GNU OpenMP when tbb is missing, and a process forked after
    # it ran is killed as soon as it merges ("fork() called from a process already
    # using GNU OpenMP"). `forksafe` takes tbb when installed, else numba's own pool.
    numba.config.THREADING_LAYER = "forksafe"

BF16, FP16, FP32 = 0, 1, 2
CODES = {torch.bfloat16: BF16, torch.float16: FP16, torch.float32: FP32}
BLOCK = 16384  # float32 elements per block and buffer: 64 KB, so the working set stays in L2

SKIP, ADD, SCALE = 0, 1, 2  # per (λ set, pair): λ == 0, λ == 1, anything else

_lock = threading.Lock()  # numba's default threading layers may not be entered by two threads at once


@intrinsic
def _as_f32(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.trunc(args[0], ir.IntType(32)), ir.FloatType())

    return types.float32(types.int64), codegen


@intrinsic
def _bits(typingctx, value):
    def codegen(context, builder, signature, args):
        return builder.zext(builder.bitcast(args[0], ir.IntType(32)), ir.IntType(64))

    return types.int64(types.float32), codegen


def _pointer(kind):
    @intrinsic
    def pointer(typingctx, address):
        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(types.CPointer(kind)))

        return types.CPointer(kind)(types.int64), codegen

    return pointer


_u16_at, _f32_at = _pointer(types.uint16), _pointer(types.float32)


@njit(cache=True)
def _f16_to_f32_bits(h):
    """fp16 bits to float32 bits, exactly (as F16C's vcvtph2ps, NaN quieted)."""
    sign = (h & 0x8000) << 16
    exponent = (h >> 10) & 0x1F
    mantissa = h & 0x3FF
    if exponent == 0x1F:
        if mantissa == 0:
            return sign | 0x7F800000
        return sign | 0x7FC00000 | (mantissa << 13)
    if exponent == 0:
        if mantissa == 0:
            return sign
        # A subnormal is mantissa · 2⁻²⁴: exact in float32, which normalises it.
        return sign | _bits(np.float32(mantissa) * np.float32(5.9604644775390625e-08))
    return sign | ((exponent + 112) << 23) | (mantissa << 13)


@njit(cache=True)
def _f32_to_bf16(value):
    """Round to nearest even; NaN becomes 0xFFFF, as torch's vectorised x86 conversion."""
    if value != value:
        return 0xFFFF
    bits = _bits(value)
    return (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16


@njit(cache=True)
def _f32_to_f16(value):
    """Round to nearest even, as F16C's vcvtps2ph: overflow to inf, subnormals, NaN payload kept."""
    bits = _bits(value)
    sign = (bits >> 16) & 0x8000
    magnitude = bits & 0x7FFFFFFF
    if magnitude >= 0x7F800000:
        if magnitude == 0x7F800000:
            return sign | 0x7C00
        return sign | 0x7E00 | ((magnitude >> 13) & 0x3FF)
    if magnitude >= 0x477FF000:  # 65520 and up round to inf
        return sign | 0x7C00
    if magnitude >= 0x38800000:  # normal: rebias the exponent, round the 13 dropped bits
        rounded = magnitude + 0xFFF + ((magnitude >> 13) & 1)
        return sign | ((rounded >> 13) - (112 << 10))
    if magnitude <= 0x33000000:  # at most 2⁻²⁵: rounds to zero (2⁻²⁵ is a tie, to even)
        return sign
    mantissa = (magnitude & 0x7FFFFF) | 0x800000
    shift = 126 - (magnitude >> 23)  # 14 to 24
    kept = mantissa >> shift
    rest = mantissa & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    if rest > half or (rest == half and (kept & 1) == 1):
        kept += 1
    return sign | kept


@njit(cache=True)
def _widen(address, kind, start, count, out):
    """Elements [start, start + count) of an input, as float32, into `out`."""
    if kind == FP32:
        source = carray(_f32_at(address + 4 * start), count)
        for i in range(count):
            out[i] = source[i]
    elif kind == BF16:
        halves = carray(_u16_at(address + 2 * start), count)
        for i in range(count):
            out[i] = _as_f32(np.int64(halves[i]) << 16)
    else:
        halves = carray(_u16_at(address + 2 * start), count)
        for i in range(count):
            out[i] = _as_f32(_f16_to_f32_bits(np.int64(halves[i])))


@njit(cache=True)
def _store(values, count, address, kind, start):
    """Round `values[:count]` to the output dtype into elements [start, start + count)."""
    if kind == FP32:
        target = carray(_f32_at(address + 4 * start), count)
        for i in range(count):
            target[i] = values[i]
    elif kind == BF16:
        halves = carray(_u16_at(address + 2 * start), count)
        for i in range(count):
            halves[i] = np.uint16(_f32_to_bf16(values[i]))
    else:
        halves = carray(_u16_at(address + 2 * start), count)
        for i in range(count):
            halves[i] = np.uint16(_f32_to_f16(values[i]))


@njit(parallel=True, cache=True, nogil=True)
def _merge(addresses, kinds, size, shared, grpo, sft, active, modes, lambdas, outputs, out_kind, block):
    """outputs[j] = target + Σ_p λ[j, p]·(inputs[grpo[p]] − inputs[sft[p]]), over the first `shared` elements."""
    sets, pairs = modes.shape
    for b in prange((size + block - 1) // block):
        start = b * block
        count = min(block, size - start)
        sums = np.empty((sets, block), np.float32)
        delta = np.empty(block, np.float32)
        scratch = np.empty(block, np.float32)
        _widen(addresses[0], kinds[0], start, count, scratch)
        for j in range(sets):
            for i in range(count):
                sums[j, i] = scratch[i]
        covered = min(count, shared - start)
        for p in range(pairs if covered > 0 else 0):
            if not active[p]:
                continue
            _widen(addresses[grpo[p]], kinds[grpo[p]], start, covered, delta)
            if sft[p] >= 0:
                _widen(addresses[sft[p]], kinds[sft[p]], start, covered, scratch)
                for i in range(covered):
                    delta[i] = delta[i] - scratch[i]
            for j in range(sets):
                if modes[j, p] == ADD:
                    for i in range(covered):
                        sums[j, i] = sums[j, i] + delta[i]
                elif modes[j, p] == SCALE:
                    lam = lambdas[j, p]
                    for i in range(covered):
                        sums[j, i] = sums[j, i] + delta[i] * lam
        for j in range(sets):
            _store(sums[j], count, outputs[j], out_kind, start)


def supports(tensors: Sequence[torch.Tensor], out_dtype: torch.dtype) -> bool:
    """Whether the fused pass applies: CPU tensors of bf16/fp16/fp32, written as one of those."""
    return out_dtype in CODES and all(t.device.type == "cpu" and t.dtype in CODES for t in tensors)


def merge(
    target: torch.Tensor,
    pairs: Sequence[Tuple[torch.Tensor, Optional[torch.Tensor]]],
    lambda_sets: Sequence[Sequence[float]],
    out_dtype: torch.dtype,
    shared_rows: Optional[int] = None,
    block: int = BLOCK,
    outputs: Optional[Sequence[torch.Tensor]] = None,
) -> List[torch.Tensor]:
    """One output per λ set, as `kernel._merge_block` computes and then rounds it.

    With `shared_rows`, the pairs apply to the first that many rows (axis 0) only.
    `outputs`, when given, are written in place (contiguous, `out_dtype`, the
    target's shape), such as views into a mapped output file.
    Callers check `supports` and the shapes first.
    """
    inputs = [target.detach().contiguous()]
    grpo, sft = [], []
    for g, s in pairs:
        grpo.append(len(inputs))
        inputs.append(g.detach().contiguous())
        if s is None:
            sft.append(-1)
        else:
            sft.append(len(inputs))
            inputs.append(s.detach().contiguous())
    modes = np.zeros((len(lambda_sets), len(pairs)), np.int64)
    lambdas = np.zeros((len(lambda_sets), len(pairs)), np.float32)
    for j, lams in enumerate(lambda_sets):
        for p, lam in enumerate(lams):
            # The torch kernel tests λ == 0 and λ == 1 before rounding λ to float32.
            modes[j, p] = SKIP if lam == 0 else ADD if lam == 1 else SCALE
            lambdas[j, p] = torch.tensor(lam, dtype=torch.float32).item()  # as the torch kernel rounds it
    size = target.numel()
    shared = size if shared_rows is None else shared_rows * (size // target.shape[0] if target.shape[0] else 0)
    if outputs is None:
        outputs = [torch.empty(target.shape, dtype=out_dtype) for _ in lambda_sets]
    elif len(outputs) != len(lambda_sets) or any(
        o.dtype != out_dtype or o.shape != target.shape or not o.is_contiguous() or o.device.type != "cpu"
        for o in outputs
    ):
        raise ValueError("outputs must be one contiguous CPU tensor per λ set, in out_dtype and the target's shape")
    with _lock:
        _merge(
            np.array([t.data_ptr() for t in inputs], np.int64),
            np.array([CODES[t.dtype] for t in inputs], np.int64),
            size,
            shared,
            np.array(grpo, np.int64),
            np.array(sft, np.int64),
            (modes != SKIP).any(axis=0),
            modes,
            lambdas,
            np.array([o.data_ptr() for o in outputs], np.int64),
            CODES[out_dtype],
            block,
        )
    return outputs
