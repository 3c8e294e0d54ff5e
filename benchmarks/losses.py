"""Forward + backward timings of medmtl's losses against MONAI, pytorch-msssim and torchmetrics.

    python benchmarks/losses.py                 # full sizes, on CUDA when present
    python benchmarks/losses.py --quick         # smaller sizes and fewer runs (for CPU)
    python benchmarks/losses.py --tune          # also sweep the Triton launch shapes (CUDA)
    python benchmarks/losses.py --cases "" --profile   # only where the eager calls' host time goes (CUDA)

Each row is the median of ``--runs`` timed calls after ``--warmup`` untimed ones; one call computes
the loss and its gradient w.r.t. the prediction. CUDA times come from CUDA events recorded around each
call (so host overhead shows when the GPU waits on Python), CPU times from ``time.perf_counter``.
"(graph)" rows replay the same call captured in a CUDA graph: GPU time alone. "medmtl triton" calls the
kernels through a plain autograd.Function (the eager route), "(custom op)" through the torch.ops custom
ops that torch.compile traces.

The floor is the time to move the bytes a fused loss must move at the copy rate measured here
(device-to-device copy, read + write): SSIM reads x and y twice and writes one gradient; Dice + CE
reads logits and labels twice and writes the logits' gradient. Libraries that are not installed are
skipped with a note.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
import time
from collections.abc import Callable

import torch

SIZES = {
    "full": {"ssim2d": (16, 1, 320, 320), "ssim3d": (2, 1, 64, 128, 128), "dicece": (4, 4, 128, 128, 64)},
    "quick": {"ssim2d": (4, 1, 160, 160), "ssim3d": (1, 1, 32, 48, 48), "dicece": (2, 4, 64, 64, 32)},
}


def _timer(
    device: torch.device, runs: int, warmup: int, budget_s: float = 10.0
) -> Callable[[Callable[[], object]], float]:
    """A function that times a zero-argument callable: median milliseconds over ``runs`` calls. A call
    slower than ``budget_s / runs`` (the slow reference rows at 3D sizes) gets fewer runs, never under
    10; the count used is left in the function's ``last_runs``."""

    def count(fn) -> int:
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        once = time.perf_counter() - start
        return max(10, min(runs, int(budget_s / max(once, 1e-9))))

    def cuda(fn):
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        n = time_ms.last_runs = count(fn)
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)
        ]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in events)

    def cpu(fn):
        for _ in range(warmup):
            fn()
        n = time_ms.last_runs = count(fn)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t))
        return statistics.median(times)

    time_ms = cuda if device.type == "cuda" else cpu
    time_ms.last_runs = runs
    return time_ms


def copy_rate(device: torch.device, time_ms) -> float:
    """Bytes per second of a large device copy, counting the bytes read and the bytes written."""
    n = (256 if device.type == "cuda" else 64) * 2**20 // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    return 2 * 4 * n / (time_ms(lambda: dst.copy_(src)) / 1e3)


def _fwd_bwd(loss: Callable[[torch.Tensor], torch.Tensor], pred: torch.Tensor) -> Callable[[], object]:
    leaf = pred.detach().clone().requires_grad_(True)
    return lambda: torch.autograd.grad(loss(leaf), leaf)


def _captured(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` captured once in a CUDA graph, after warm-up calls on a side stream (which also compile the
    kernels); returns the graph's replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def _graphed(loss: Callable[[torch.Tensor], torch.Tensor], pred: torch.Tensor) -> Callable[[], object]:
    """The same call as ``_fwd_bwd`` captured once in a CUDA graph; returns its replay."""
    return _captured(_fwd_bwd(loss, pred))


RUNS_ASKED = [50]  # --runs, for marking rows that the time budget cut short


def _optional(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def ssim_contenders(pred: torch.Tensor, target: torch.Tensor, cuda: bool) -> dict[str, Callable | str]:
    """name -> loss(pred) (1 - SSIM, data range 1, 11-tap Gaussian of sigma 1.5), or why it is missing."""
    from medmtl.losses import ssim_loss

    spatial = pred.dim() - 2
    rows: dict[str, Callable | str] = {}
    if cuda:
        rows["medmtl triton"] = lambda p: ssim_loss(p, target, 1.0, backend="triton")
        rows["medmtl triton (custom op)"] = _via_custom_op(rows["medmtl triton"])
    rows["medmtl torch"] = lambda p: ssim_loss(p, target, 1.0, backend="torch")
    monai = _optional("monai.losses")
    if monai is None:
        rows["MONAI SSIMLoss"] = "monai not installed"
    else:
        monai_loss = monai.SSIMLoss(spatial_dims=spatial, data_range=1.0)
        rows["MONAI SSIMLoss"] = lambda p: monai_loss(p, target)
    msssim = _optional("pytorch_msssim")
    if msssim is None:
        rows["pytorch-msssim"] = "pytorch_msssim not installed"
    else:
        rows["pytorch-msssim"] = lambda p: 1 - msssim.ssim(p, target, data_range=1.0)
    tm = _optional("torchmetrics.functional.image")
    if tm is None:
        rows["torchmetrics"] = "torchmetrics not installed"
    else:
        rows["torchmetrics"] = lambda p: 1 - tm.structural_similarity_index_measure(p, target, data_range=1.0)
    return rows


def dice_contenders(labels: torch.Tensor, cuda: bool) -> dict[str, Callable | str]:
    """name -> loss(logits): Dice + CE with softmax over labels (B, 1, ...), MONAI's defaults."""
    from medmtl.losses import dice_ce_loss

    rows: dict[str, Callable | str] = {}
    if cuda:
        rows["medmtl triton"] = lambda z: dice_ce_loss(z, labels, backend="triton")
        rows["medmtl triton (custom op)"] = _via_custom_op(rows["medmtl triton"])
    rows["medmtl torch"] = lambda z: dice_ce_loss(z, labels, backend="torch")
    monai = _optional("monai.losses")
    if monai is None:
        rows["MONAI DiceCELoss"] = "monai not installed"
    else:
        monai_loss = monai.DiceCELoss(to_onehot_y=True, softmax=True)
        rows["MONAI DiceCELoss"] = lambda z: monai_loss(z, labels)
    return rows


def table(title: str, rows: dict[str, Callable | str], pred, floor_bytes, rate, time_ms, baseline, graph):
    """Print one markdown table: median ms, multiple of the floor, speed-up over ``baseline``. With
    ``graph``, medmtl triton and the baseline are also timed replayed from a CUDA graph (GPU time
    alone, no host overhead), after every eager row; a "(graph)" row is compared with the baseline's."""
    floor_ms = 1e3 * floor_bytes / rate
    print(f"\n### {title}\n\nfloor {floor_ms:.4f} ms ({floor_bytes / 1e6:.1f} MB at {rate / 1e9:.0f} GB/s)\n")
    print(f"| implementation | median ms | x floor | speed-up vs {baseline} |")
    print("| --- | ---: | ---: | ---: |")
    names = [baseline, *(name for name in rows if name != baseline)] if baseline in rows else list(rows)
    if graph:
        names += [f"{name} (graph)" for name in (baseline, "medmtl triton") if callable(rows.get(name))]
    times: dict[str, float | str] = {}
    for name in names:  # the baseline first, each row printed as soon as it is timed
        loss = rows[name.removesuffix(" (graph)")]
        if isinstance(loss, str):
            print(f"| {name} | n/a: {loss} | | |", flush=True)
            continue
        ms = times[name] = _attempt(time_ms, _graphed if name.endswith("(graph)") else _fwd_bwd, loss, pred)
        if isinstance(ms, str):
            print(f"| {name} | n/a: {ms} | | |", flush=True)
            continue
        reference = times.get(f"{baseline} (graph)" if name.endswith("(graph)") else baseline)
        speedup = f"{reference / ms:.2f}" if isinstance(reference, float) else "n/a"
        runs = f" ({time_ms.last_runs} runs)" if time_ms.last_runs < RUNS_ASKED[0] else ""
        print(f"| {name}{runs} | {ms:.4f} | {ms / floor_ms:.1f} | {speedup} |", flush=True)


@contextlib.contextmanager
def _custom_op_route():
    """Send the losses through the ``torch.ops.medmtl`` custom ops in eager mode too (they normally
    take them only under torch.compile): the "(custom op)" rows."""
    from medmtl.losses import _dice_op, _ssim_op

    saved = _ssim_op.sums, _dice_op.sums
    _ssim_op.sums = lambda *args: torch.ops.medmtl.ssim_sums(*args[:7])  # drops cs_grad, an eager-route hint
    _dice_op.sums = torch.ops.medmtl.dice_sums
    try:
        yield
    finally:
        _ssim_op.sums, _dice_op.sums = saved


def _via_custom_op(loss: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    def call(x):
        with _custom_op_route():
            return loss(x)

    return call


def _attempt(time_ms, prepare, *args) -> float | str:
    """The timing, or the error as text: one failing row (say a kernel that does not build on this
    machine) must not cost the rest of a one-shot GPU run."""
    try:
        return time_ms(prepare(*args))
    except Exception as error:  # reported in the table
        return f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"


def _show(result: float | str) -> str:
    return f"{result:.4f}" if isinstance(result, float) else result


def _graph_ms(time_ms, fn) -> float | str:
    """GPU time of ``fn`` alone: its replays from a CUDA graph, timed (or why that failed)."""
    return _attempt(time_ms, _captured, fn)


def _ssim_kernels(case: str, sizes, device):
    """(N, *S) inputs, their geometry, the padded window, the constants and an upstream gradient."""
    from medmtl.losses import _triton_ssim
    from medmtl.losses._window import ssim_constants, window_weights

    x = torch.rand(sizes[case], device=device).flatten(0, 1)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    w = window_weights("gaussian", 11, 1.5)
    g = _triton_ssim._Geometry(x, len(w))
    win = _triton_ssim._padded_window(tuple(w), x.device)
    grad = torch.rand(x.shape[0], 2, device=device)
    return x, y, g, win, ssim_constants(1.0), grad


def kernels_only(case: str, sizes, device, time_ms) -> None:
    """The Triton SSIM kernels alone at the default launch shapes, each replayed from a CUDA graph,
    and the three launches eager (no custom op, no autograd): splits the "medmtl triton" row's time
    between the kernels, their launches and the glue around them."""
    from medmtl.losses import _triton_ssim as ts
    from medmtl.losses._window import window_weights

    x, y, g, win, (c1, c2), grad = _ssim_kernels(case, sizes, device)
    fwd, adj = g.launch("stream", None, None, None), g.launch("adjoint", None, None, None)
    _, maps = ts.stream(x, y, None, g, win, c1, c2, fwd, grad=grad)
    times = {
        "forward": _graph_ms(time_ms, lambda: ts.stream(x, y, None, g, win, c1, c2, fwd)),
        "backward maps": _graph_ms(time_ms, lambda: ts.stream(x, y, None, g, win, c1, c2, fwd, grad=grad)),
        "backward adjoint": _graph_ms(time_ms, lambda: ts.adjoint(maps, x, y, g, win, adj)),
        "fused forward + maps": _graph_ms(
            time_ms, lambda: ts.stream(x, y, None, g, win, c1, c2, fwd, fused=True)
        ),
        "scaled adjoint": _graph_ms(time_ms, lambda: ts.adjoint(maps, x, y, g, win, adj, scale=grad)),
    }

    w = window_weights("gaussian", 11, 1.5)

    def eager():
        ts.ssim_sums(x, y, None, w, c1, c2)
        ts.ssim_sums_backward(grad, x, y, None, w, c1, c2)

    def eager_fused():
        _, m = ts.ssim_sums_and_maps(x, y, None, w, c1, c2)
        ts.backward_from_maps(grad, m, x, y, w)

    times["three kernels, eager launches"] = _attempt(time_ms, lambda f: f, eager)
    times["two fused kernels, eager launches"] = _attempt(time_ms, lambda f: f, eager_fused)
    print(f"\nTriton SSIM kernels alone (launch shapes: stream {fwd}, adjoint {adj}; ms):")
    print(", ".join(f"{name} {_show(ms)}" for name, ms in times.items()))


SSIM_SHAPES = {  # (block_s, block_w, num_warps), the defaults first
    False: [(32, 64, 2), (16, 64, 2), (8, 64, 2), (16, 32, 1), (8, 32, 1), (32, 32, 1), (16, 64, 4),
            (8, 128, 4), (16, 128, 4), (32, 128, 4), (16, 128, 2), (8, 64, 1)],
    True: [(32, 64, 2), (16, 64, 2), (8, 64, 2), (8, 32, 1), (16, 128, 4), (8, 128, 4)],
}  # fmt: skip
DICE_SHAPES = [(1024, 4, 8), (512, 4, 4), (1024, 8, 8), (2048, 2, 8), (1024, 1, 4), (1024, 2, 8), (2048, 1, 8),
               (512, 2, 4), (4096, 1, 16)]  # fmt: skip


def _ssim_shape_times(time_ms, x, y, g, win, c1, c2, grad, shape) -> list[float | str]:
    """GPU times of the forward, backward-maps and adjoint kernels at one launch shape."""
    from medmtl.losses import _triton_ssim as ts

    maps = _attempt(lambda out: out[1], lambda: ts.stream(x, y, None, g, win, c1, c2, shape, grad=grad))
    cells = [
        _graph_ms(time_ms, lambda: ts.stream(x, y, None, g, win, c1, c2, shape)),
        _graph_ms(time_ms, lambda: ts.stream(x, y, None, g, win, c1, c2, shape, grad=grad)),
    ]
    if isinstance(maps, torch.Tensor):
        return [*cells, _graph_ms(time_ms, lambda: ts.adjoint(maps, x, y, g, win, shape))]
    return [*cells, maps]


def tune(device, time_ms, sizes) -> None:
    """GPU time of each Triton kernel alone (CUDA-graph replays) over a sweep of launch shapes."""
    from medmtl.losses import _triton_dice

    for case in ("ssim2d", "ssim3d"):
        x, y, g, win, (c1, c2), grad = _ssim_kernels(case, sizes, device)
        print(f"\n### Triton SSIM launch shapes, {'x'.join(map(str, sizes[case]))} (kernels alone, ms)\n")
        print("| block_s | block_w | warps | forward | backward maps | backward adjoint |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
        for shape in SSIM_SHAPES[g.is3d]:
            cells = _ssim_shape_times(time_ms, x, y, g, win, c1, c2, grad, shape)
            print(
                f"| {shape[0]} | {shape[1]} | {shape[2]} | " + " | ".join(map(_show, cells)) + " |",
                flush=True,
            )
    shape = sizes["dicece"]
    z = torch.randn(shape, device=device).flatten(2)
    labels = torch.randint(0, shape[1], (shape[0], z.shape[2]), device=device).float()
    gs, gce = torch.ones(shape[0], shape[1], 3, device=device), torch.ones(shape[0], 2, device=device)
    print(f"\n### Triton Dice + CE launch shapes, {'x'.join(map(str, shape))} (kernels alone, ms)\n")
    print("| block | iters | warps | forward | backward |\n| ---: | ---: | ---: | ---: | ---: |", flush=True)
    for block, iters, warps in DICE_SHAPES:
        launch = {"block": block, "iters": iters, "num_warps": warps}
        fwd = _graph_ms(time_ms, lambda launch=launch: _triton_dice.dice_sums(
            z, labels, None, None, "softmax", False, True, **launch))  # fmt: skip
        bwd = _graph_ms(time_ms, lambda launch=launch: _triton_dice.dice_sums_backward(
            gs, gce, z, labels, None, None, "softmax", False, True, **launch))  # fmt: skip
        print(f"| {block} | {iters} | {warps} | {_show(fwd)} | {_show(bwd)} |", flush=True)


def profile(device, sizes) -> None:
    """Where the host time of one eager "medmtl triton" forward + backward goes: torch.profiler's
    operators by self CPU time over 20 calls, for SSIM 2D and Dice + CE."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from medmtl.losses import dice_ce_loss, ssim_loss

    target = torch.rand(sizes["ssim2d"], device=device)
    pred = (target + 0.1 * torch.randn_like(target)).clamp(0, 1)
    logits = torch.randn(sizes["dicece"], device=device)
    labels = torch.randint(0, logits.shape[1], (logits.shape[0], 1, *logits.shape[2:]), device=device).float()
    cases = {
        "SSIM 2D": _fwd_bwd(lambda p: ssim_loss(p, target, 1.0, backend="triton"), pred),
        "Dice + CE": _fwd_bwd(lambda z: dice_ce_loss(z, labels, backend="triton"), logits),
    }
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    for name, fn in cases.items():
        for _ in range(5):
            fn()
        sync()
        with torch_profile(activities=activities) as prof:
            for _ in range(20):
                fn()
            sync()
        print(f"\n### {name}: 20 eager forward + backward calls\n")
        print(
            prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=48)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, 10 runs (for CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--runs", type=int, help="timed runs per row (default 50, 10 with --quick)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--cases", default="ssim2d,ssim3d,dicece", help="comma-separated subset")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--tune", action="store_true", help="sweep the Triton launch shapes too (CUDA)")
    parser.add_argument(
        "--profile", action="store_true", help="profile the eager Triton calls' host time (CUDA)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    runs = RUNS_ASKED[0] = args.runs or (10 if args.quick else 50)
    sizes = SIZES["quick" if args.quick else "full"]
    time_ms = _timer(device, runs, args.warmup)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    triton = _optional("triton")
    print(f"## medmtl losses, forward + backward: {name}")
    print(f"\ntorch {torch.__version__}, triton {getattr(triton, '__version__', 'not installed')}; "
          f"median of {runs} runs after {args.warmup} warm-up; float32")  # fmt: skip
    rate = copy_rate(device, time_ms)
    g = torch.Generator(device=device).manual_seed(0)
    for case in filter(None, args.cases.split(",")):
        shape = sizes[case]
        if case.startswith("ssim"):
            target = torch.rand(shape, generator=g, device=device)
            pred = (target + 0.1 * torch.randn(shape, generator=g, device=device)).clamp(0, 1)
            rows = ssim_contenders(pred, target, cuda)
            floor = 5 * pred.numel() * 4
            title = f"SSIM {'x'.join(map(str, shape))}"
            table(title, rows, pred, floor, rate, time_ms, "torchmetrics", cuda)
            if cuda:
                kernels_only(case, sizes, device, time_ms)
        else:
            logits = torch.randn(shape, generator=g, device=device)
            labels = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=g, device=device).float()
            floor = (3 * logits.numel() + 2 * labels.numel()) * 4
            title = f"Dice + CE {'x'.join(map(str, shape))}, float32 labels"
            table(
                title, dice_contenders(labels, cuda), logits, floor, rate, time_ms, "MONAI DiceCELoss", cuda
            )
    if args.profile and cuda:
        profile(device, sizes)
    if args.tune and cuda:
        tune(device, time_ms, sizes)


if __name__ == "__main__":
    main()
