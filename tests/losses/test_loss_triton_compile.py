"""The Triton kernels compile to Hopper (sm_90) machine code without a GPU.

The interpreter tests run the kernels' Python; this one runs Triton's compiler (through ptxas to a
cubin) on every kernel, so a construct the compiler rejects fails here rather than on a lent GPU. It
also reads the compiled SSIM loops (TTIR): the compiler keeps a variable across loop iterations only
when the body changes it, which the interpreter never checks, so the register ring of the S filter
must show up as loop-carried values, else the compiled kernels filter with zeros. It runs in a
subprocess because ``TRITON_INTERPRET=1`` (set for the test suite) swaps the kernels for interpreted
ones at import.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

SCRIPT = r"""
import re

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from medmtl.losses import _triton_dice, _triton_ssim

target = GPUTarget("cuda", 90, 32)


def build(fn, types, constexprs, warps):
    signature = {name: types.get(name, "constexpr" if name in constexprs else "i32") for name in fn.arg_names}
    kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=target,
                            options={"num_warps": warps})
    assert kernel.asm["cubin"], fn.__name__
    return kernel


def carried(kernel):  # the most values any scf.for of the kernel carries to its next iteration
    loops = [line.split("iter_args(", 1)[1] for line in kernel.asm["ttir"].splitlines() if "scf.for" in line]
    return max(len(re.findall(r"%[\w#]+ = ", args.split(")")[0])) for args in loops)


ptr = "*fp32"
ssim = {n: ptr for n in ("x_ptr", "y_ptr", "m_ptr", "g_ptr", "win", "part_ptr", "maps_ptr", "mp_ptr", "dx_ptr",
                         "dy_ptr")}  # fmt: skip
ssim.update(C1="fp32", C2="fp32", x_ptr="*fp16", y_ptr="*fp16")
# The ring holds rows OFF..9 of each moment (5 forward, 4 adjoint); the sums add 2 accumulators.
# Modes: forward sums, backward maps, and both at once (the fused forward).
for is3d in (False, True):
    for off, sums, maps in ((0, True, False), (3, False, True), (0, True, True)):
        k = build(_triton_ssim._ssim_stream_kernel, ssim, {"OFF": off, "PAD": 5 - off, "IS3D": is3d,
                  "HAS_MASK": True, "SUMS": sums, "MAPS": maps, "BLOCK_S": 32, "BLOCK_W": 64}, 2)
        assert carried(k) == 5 * (10 - off) + (2 if sums else 0), (is3d, off, sums, maps, carried(k))
    for scale in (False, True):
        k = build(_triton_ssim._ssim_adjoint_kernel, ssim, {"OFF": 2, "IS3D": is3d, "SCALE": scale, "BLOCK_S": 32,
                  "BLOCK_W": 64}, 2)  # fmt: skip
        assert carried(k) == 4 * 8, (is3d, scale, carried(k))
dice = {n: ptr for n in ("z_ptr", "w_ptr", "cw_ptr", "out_ptr", "gs_ptr", "gce_ptr", "dz_ptr")}
for act, labels in ((0, True), (1, False)):
    dice["t_ptr"] = "*i64" if labels else ptr
    flags = {"ACT": act, "LABELS": labels, "HAS_W": True, "HAS_CW": True, "SQUARED": True, "WITH_CE": True,
             "C_P2": 4, "BLOCK": 1024}
    build(_triton_dice._dice_fwd_kernel, dice, flags, 8)
    build(_triton_dice._dice_bwd_kernel, dice, flags, 8)
print("compiled")
"""


def test_kernels_compile_for_hopper(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, not from a cache
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "compiled" in done.stdout
