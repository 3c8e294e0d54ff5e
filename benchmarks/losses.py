"""Forward + backward timings of medmtl's losses against MONAI, pytorch-msssim and torchmetrics.

    python benchmarks/losses.py                 # full sizes, on CUDA when present
    python benchmarks/losses.py --quick         # smaller sizes and fewer runs (for CPU)
    python benchmarks/losses.py --tune          # also sweep the Triton launch shapes (CUDA)

Each row is the median of ``--runs`` timed calls after ``--warmup`` untimed ones; one call computes
the loss and its gradient w.r.t. the prediction. CUDA times come from CUDA events recorded around each
call (so host overhead shows when the GPU waits on Python), CPU times from ``time.perf_counter``.
"medmtl triton (graph)" replays the same call captured in a CUDA graph: GPU time alone.

The floor is the time to move the bytes a fused loss must move at the copy rate measured here
(device-to-device copy, read + write): SSIM reads x and y twice and writes one gradient; Dice + CE
reads logits and labels twice and writes the logits' gradient. Libraries that are not installed are
skipped with a note.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from collections.abc import Callable

import torch

SIZES = {
    "full": {"ssim2d": (16, 1, 320, 320), "ssim3d": (2, 1, 64, 128, 128), "dicece": (4, 4, 128, 128, 64)},
    "quick": {"ssim2d": (4, 1, 160, 160), "ssim3d": (1, 1, 32, 48, 48), "dicece": (2, 4, 64, 64, 32)},
}


def _timer(device: torch.device, runs: int, warmup: int) -> Callable[[Callable[[], object]], float]:
    """A function that times a zero-argument callable: median milliseconds over ``runs`` calls."""

    def cuda(fn):
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(runs)]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in events)

    def cpu(fn):
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t))
        return statistics.median(times)

    return cuda if device.type == "cuda" else cpu


def copy_rate(device: torch.device, time_ms) -> float:
    """Bytes per second of a large device copy, counting the bytes read and the bytes written."""
    n = (256 if device.type == "cuda" else 64) * 2**20 // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    return 2 * 4 * n / (time_ms(lambda: dst.copy_(src)) / 1e3)


def _fwd_bwd(loss: Callable[[torch.Tensor], torch.Tensor], pred: torch.Tensor) -> Callable[[], object]:
    leaf = pred.detach().clone().requires_grad_(True)
    return lambda: torch.autograd.grad(loss(leaf), leaf)


def _graphed(loss: Callable[[torch.Tensor], torch.Tensor], pred: torch.Tensor) -> Callable[[], object]:
    """The same call captured once in a CUDA graph; returns its replay."""
    leaf = pred.detach().clone().requires_grad_(True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            torch.autograd.grad(loss(leaf), leaf)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        torch.autograd.grad(loss(leaf), leaf)
    return graph.replay


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
    rows["medmtl torch"] = lambda z: dice_ce_loss(z, labels, backend="torch")
    monai = _optional("monai.losses")
    if monai is None:
        rows["MONAI DiceCELoss"] = "monai not installed"
    else:
        monai_loss = monai.DiceCELoss(to_onehot_y=True, softmax=True)
        rows["MONAI DiceCELoss"] = lambda z: monai_loss(z, labels)
    return rows


def table(title: str, rows: dict[str, Callable | str], pred, floor_bytes, rate, time_ms, baseline, graph):
    """Print one markdown table: median ms, multiple of the floor, speed-up over ``baseline``."""
    floor_ms = 1e3 * floor_bytes / rate
    print(f"\n### {title}\n\nfloor {floor_ms:.4f} ms ({floor_bytes / 1e6:.1f} MB at {rate / 1e9:.0f} GB/s)\n")
    print(f"| implementation | median ms | x floor | speed-up vs {baseline} |")
    print("| --- | ---: | ---: | ---: |")
    times: dict[str, float | str] = {}
    for name, loss in rows.items():
        times[name] = loss if isinstance(loss, str) else _attempt(time_ms, _fwd_bwd, loss, pred)
        if graph and name == "medmtl triton":
            times["medmtl triton (graph)"] = _attempt(time_ms, _graphed, loss, pred)
    reference = times.get(baseline)
    for name, ms in times.items():
        if isinstance(ms, str):
            print(f"| {name} | n/a: {ms} | | |")
            continue
        speedup = f"{reference / ms:.2f}" if isinstance(reference, float) else "n/a"
        print(f"| {name} | {ms:.4f} | {ms / floor_ms:.1f} | {speedup} |")


def _attempt(time_ms, prepare, *args) -> float | str:
    """The timing, or the error as text: one failing row (say a kernel that does not build on this
    machine) must not cost the rest of a one-shot GPU run."""
    try:
        return time_ms(prepare(*args))
    except Exception as error:  # reported in the table
        return f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"


def _show(result: float | str) -> str:
    return f"{result:.4f}" if isinstance(result, float) else result


def kernels_only(pred: torch.Tensor, target: torch.Tensor, time_ms) -> None:
    """One line: the eager Triton SSIM kernels alone (forward + backward launchers, no custom op, no
    autograd), to split the "medmtl triton" row's host overhead between the kernels and the glue."""
    from medmtl.losses import _triton_ssim
    from medmtl.losses._window import ssim_constants, window_weights

    x, y = pred.flatten(0, 1), target.flatten(0, 1)
    w, (c1, c2) = window_weights("gaussian", 11, 1.5), ssim_constants(1.0)
    grad = torch.ones(x.shape[0], 2, device=x.device)

    def step():
        _triton_ssim.ssim_sums(x, y, None, w, c1, c2)
        _triton_ssim.ssim_sums_backward(grad, x, y, None, w, c1, c2)

    ms = _show(_attempt(time_ms, lambda f: f, step))
    print(f"\nTriton SSIM kernels only (eager: 3 kernels and a partial-sum reduction): {ms} ms")


def tune(device, time_ms, sizes) -> None:
    """Kernel-only fwd + bwd times of the Triton launchers over a few launch shapes."""
    from medmtl.losses import _triton_dice, _triton_ssim
    from medmtl.losses._window import ssim_constants, window_weights

    x = torch.rand(sizes["ssim2d"], device=device).flatten(0, 1)
    y = torch.rand_like(x)
    w = window_weights("gaussian", 11, 1.5)
    c1, c2 = ssim_constants(1.0)
    grad = torch.ones(x.shape[0], 2, device=device)
    print("\n### Triton SSIM launch shapes (kernels only, fwd + bwd)\n")
    print("| block_w | block_s | warps | ms |\n| ---: | ---: | ---: | ---: |")
    for bw, bs, warps in [(32, 32, 1), (64, 16, 2), (64, 32, 2), (64, 64, 2), (64, 32, 1), (128, 32, 4), (128, 32, 2)]:
        launch = {"block_w": bw, "block_s": bs, "num_warps": warps}

        def ssim_step(launch=launch):
            _triton_ssim.ssim_sums(x, y, None, w, c1, c2, **launch)
            _triton_ssim.ssim_sums_backward(grad, x, y, None, w, c1, c2, **launch)

        print(f"| {bw} | {bs} | {warps} | {_show(_attempt(time_ms, lambda f: f, ssim_step))} |")
    shape = sizes["dicece"]
    z = torch.randn(shape, device=device).flatten(2)
    labels = torch.randint(0, shape[1], (shape[0], z.shape[2]), device=device).float()
    gs, gce = torch.ones(shape[0], shape[1], 3, device=device), torch.ones(shape[0], 2, device=device)
    print("\n### Triton Dice + CE launch shapes (kernels only, fwd + bwd)\n")
    print("| block | iters | warps | ms |\n| ---: | ---: | ---: | ---: |")
    for block, iters, warps in [(1024, 4, 8), (512, 4, 4), (1024, 8, 8), (2048, 2, 8), (512, 8, 8)]:
        launch = {"block": block, "iters": iters, "num_warps": warps}

        def dice_step(launch=launch):
            _triton_dice.dice_sums(z, labels, None, None, "softmax", False, True, **launch)
            _triton_dice.dice_sums_backward(gs, gce, z, labels, None, None, "softmax", False, True, **launch)

        print(f"| {block} | {iters} | {warps} | {_show(_attempt(time_ms, lambda f: f, dice_step))} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, 10 runs (for CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--runs", type=int, help="timed runs per row (default 50, 10 with --quick)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--cases", default="ssim2d,ssim3d,dicece", help="comma-separated subset")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--tune", action="store_true", help="sweep the Triton launch shapes too (CUDA)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    runs = args.runs or (10 if args.quick else 50)
    sizes = SIZES["quick" if args.quick else "full"]
    time_ms = _timer(device, runs, args.warmup)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    triton = _optional("triton")
    print(f"## medmtl losses, forward + backward: {name}")
    print(f"\ntorch {torch.__version__}, triton {getattr(triton, '__version__', 'not installed')}; "
          f"median of {runs} runs after {args.warmup} warm-up; float32")  # fmt: skip
    rate = copy_rate(device, time_ms)
    g = torch.Generator(device=device).manual_seed(0)
    for case in args.cases.split(","):
        shape = sizes[case]
        if case.startswith("ssim"):
            target = torch.rand(shape, generator=g, device=device)
            pred = (target + 0.1 * torch.randn(shape, generator=g, device=device)).clamp(0, 1)
            rows = ssim_contenders(pred, target, cuda)
            floor = 5 * pred.numel() * 4
            title = f"SSIM {'x'.join(map(str, shape))}"
            table(title, rows, pred, floor, rate, time_ms, "torchmetrics", cuda)
            if cuda:
                kernels_only(pred, target, time_ms)
        else:
            logits = torch.randn(shape, generator=g, device=device)
            labels = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=g, device=device).float()
            floor = (3 * logits.numel() + 2 * labels.numel()) * 4
            title = f"Dice + CE {'x'.join(map(str, shape))}, float32 labels"
            table(title, dice_contenders(labels, cuda), logits, floor, rate, time_ms, "MONAI DiceCELoss", cuda)
    if args.tune and cuda:
        tune(device, time_ms, sizes)


if __name__ == "__main__":
    main()
