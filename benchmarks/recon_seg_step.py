"""Training-step time, inference time and peak memory of ReconSegNet against MONAI's VarNet, as ratios.

Models, all at the same size, coil count and number of cascades:

- ``joint`` and ``recon``: ``medmtl.models.ReconSegNet`` with its default widths;
- ``joint_cg``: the shipped model's kind, ``joint`` with conjugate-gradient data consistency (``dc: cg``, 4 steps
  per cascade) and a 16-channel magnitude refiner;
- ``monai``: ``VariationalNetworkModel(CoilSensitivityModel(2), ComplexUnet(2), num_cascades)``, MONAI's
  defaults.

The input is one simulated MNI slice (``SimulatedKSpaceDataset``, validation split, 4x equispaced with a
0.08 centre). A training step is forward, loss, backward and an Adam step: ``compute_losses`` summed for
medmtl; for MONAI the same reconstruction loss on its single output (L1 + 1 - SSIM, both over the target's
maximum).
Inference is one forward pass under ``torch.inference_mode``.

Each (model, round) runs in its own child process, so peak memory is that model's alone. On the CPU it is the
peak resident set size (``getrusage`` ru_maxrss) minus the resident size just before the model is built (every module already
imported), so it counts weights, gradients, Adam state, activations and the allocator's slack, and not the
interpreter, the libraries or the input. On a GPU (``--device cuda``) it is ``torch.cuda.max_memory_allocated``
minus what was allocated before the model was built (the input), and each timed call ends with
``torch.cuda.synchronize``, so times are the GPU's. ``--precision bf16`` runs forward and loss under
``torch.autocast(dtype=torch.bfloat16)``; the FFTs stay in float32 (no bfloat16 complex type).

Times are wall-clock and process CPU seconds, each the fastest over the rounds and steps, and the ratios come
from the same run. Other processes on a small machine stretch the wall times a lot (an OpenMP barrier waits
for its slowest thread, so one busy core can slow a 2-thread step tenfold); the CPU time of a ``--threads 1``
run is the measure that load disturbs least.

    .venv/bin/python benchmarks/recon_seg_step.py --coils 8 --size 256 256 --cascades 6 --threads 2
    python3 benchmarks/recon_seg_step.py --device cuda --precision bf16 --coils 15 --size 640 368 --cascades 12
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from monai.apps.reconstruction.networks.nets.coil_sensitivity_model import CoilSensitivityModel
from monai.apps.reconstruction.networks.nets.complex_unet import ComplexUnet
from monai.apps.reconstruction.networks.nets.varnet import VariationalNetworkModel

from medmtl.data.mni import SimulationOptions
from medmtl.data.online import SimulatedKSpaceDataset
from medmtl.keys import Keys
from medmtl.lightning.cuda_graph import GraphedForward
from medmtl.losses import ssim_loss
from medmtl.models import ReconSegNet
from medmtl.transforms.acs import acs_mask_from_mask

MODELS = ("joint", "joint_cg", "recon", "monai")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def current_rss() -> int:
    """Resident set size of this process now, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_sample(path: Path, coils: int, size: tuple[int, int]) -> None:
    """Write one simulated batch (B = 1) with its ACS mask to ``path``."""
    options = SimulationOptions(num_coils=coils, size=size, accelerations=(4.0,), center_fractions=(0.08,))
    sample = SimulatedKSpaceDataset("val", options=options)[0]
    batch = {k: sample[k][None] for k in (Keys.KSPACE, Keys.MASK, Keys.TARGET, Keys.SEG)}
    batch[Keys.ACS] = acs_mask_from_mask(sample[Keys.MASK])[None]
    torch.save({str(k): v for k, v in batch.items()}, path)


def recon_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 + 1 - SSIM of (B, H, W) magnitudes over the target's per-sample maximum (as ReconSegNet's)."""
    data_range = target.amax(dim=(-2, -1), keepdim=True)
    recon, target = recon / data_range, target / data_range
    return (recon - target).abs().mean() + ssim_loss(recon[:, None], target[:, None], 1.0)


def build(name: str, cascades: int):
    """-> (model, training loss of a batch, inference of a batch)."""
    if name == "monai":
        model = VariationalNetworkModel(CoilSensitivityModel(2), ComplexUnet(2), num_cascades=cascades)

        def infer(b):
            # MONAI takes one mask for the batch, (1, 1, 1, W, 1), and indexes it in Python.
            return model(b["kspace"], b["mask"][:1].bool())

        return model, lambda b: recon_loss(infer(b), b["target"]), infer

    cg = {"dc": "cg", "cg_iterations": 4, "refine_chans": 16} if name.endswith("_cg") else {}
    model = ReconSegNet(mode=name.removesuffix("_cg"), num_cascades=cascades, **cg)

    def infer(b):
        return model(b["kspace"], b["mask"], b["acs_mask"])

    return model, lambda b: sum(model.compute_losses(infer(b), b).values()), infer


def _timed(fn, warmup: int, steps: int, sync=lambda: None) -> list[tuple[float, float]]:
    """(wall seconds, process CPU seconds) of each of ``steps`` calls after ``warmup`` untimed ones; ``sync``
    waits for the device at both ends of each call. The CPU time stops before the closing ``sync`` (which
    spins on a CPU core while it waits): on a GPU it is the host's time to issue the call, so a CPU time close
    to the wall time means the host, not the GPU, sets the pace."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(steps):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        cpu = time.process_time() - cpu
        sync()
        times.append((time.perf_counter() - wall, cpu))
    return times


def child(
    name: str,
    sample: Path,
    cascades: int,
    threads: int,
    warmup: int,
    steps: int,
    device: str = "cpu",
    precision: str = "fp32",
    cuda_graph: bool = False,
    profile: bool = False,
) -> dict:
    """Measure one model in this process: step times, inference times, peak memory growth in bytes; with
    ``cuda_graph`` also the training step captured whole in a CUDA graph and replayed (``graph_train``), or
    why it could not be captured (``graph_error``); with ``profile`` the GPU's kernel time per eager training
    step (``kernel_s``) and its largest kernels (``top_kernels``: name, seconds per step)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    torch.backends.cudnn.benchmark = cuda  # fixed sizes: let cuDNN pick its fastest kernels (during warm-up)
    batch = {k: v.to(dev) for k, v in torch.load(sample).items()}
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = current_rss()
    model, loss_fn, infer = build(name, cascades)
    model.to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def train_step() -> None:
        with autocast:
            loss = loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    train = _timed(train_step, warmup, steps, sync)
    train_peak = (torch.cuda.max_memory_allocated() if cuda else peak_rss()) - base
    with torch.inference_mode(), autocast:
        inference = _timed(lambda: infer(batch), warmup, steps, sync)
    result = {
        "train": train,
        "infer": inference,
        "peak_bytes": train_peak,
        "params": sum(p.numel() for p in model.parameters()),
    }
    if profile and cuda:
        result.update(_kernel_time(train_step, sync))
    if cuda_graph and cuda and name != "monai":  # MONAI's VarNet indexes its mask on the host: no capture
        try:
            result["fit_graph_train"] = _timed(
                _fit_graphed_step(model, batch, precision), warmup, steps, sync
            )
        except Exception as err:
            result["fit_graph_error"] = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
    if cuda_graph and cuda:
        try:
            result["graph_train"] = _timed(
                _graphed_step(model, loss_fn, batch, precision), warmup, steps, sync
            )
        except Exception as err:  # a data-dependent branch or host sync in the step: report, go on
            result["graph_error"] = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
    return result


def _kernel_time(step, sync, steps: int = 3, top: int = 8) -> dict:
    """Kernel time on the GPU per call of ``step`` from ``torch.profiler``: when it is far below the wall
    time, the host (launching kernels) sets the pace, not the GPU."""
    from torch.profiler import ProfilerActivity, profile

    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        sync()
    kernels: dict[str, float] = {}
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.name] = kernels.get(event.name, 0.0) + event.device_time / 1e6 / steps
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1])[:top]
    return {"kernel_s": sum(kernels.values()), "top_kernels": [(name[:70], t) for name, t in ranked]}


def _fit_graphed_step(model, batch, precision: str):
    """The training step of ``medmtl fit`` with ``model.cuda_graph: true``: the network's forward and backward
    replayed from CUDA graphs (``medmtl.lightning.cuda_graph.GraphedForward``), the loss and Adam eager."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16")
    graphed = GraphedForward(model)

    def step() -> None:
        with autocast:
            out = graphed(batch["kspace"], batch["mask"], batch["acs_mask"])
            loss = sum(model.compute_losses(out, batch).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _graphed_step(model, loss_fn, batch, precision: str):
    """The whole training step (forward, loss, backward, Adam) captured in one CUDA graph: the replay launches
    every kernel at once, so the host's per-kernel launch cost leaves the step. The input stays in place
    (a training loop would copy each batch into it). PyTorch's whole-network capture recipe: warm up on a side
    stream, free the gradients, capture; Adam with ``capturable=True``; autocast without its cast cache."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, capturable=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=False)

    def step() -> None:
        with autocast:
            loss = loss_fn(batch)
        loss.backward()
        optimizer.step()

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coils", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    parser.add_argument("--cascades", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--rounds", type=int, default=2, help="child processes per model, interleaved")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast")
    parser.add_argument(
        "--cuda-graph", action="store_true", help="on a GPU, also time the step replayed from a CUDA graph"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="on a GPU, also the kernel time per eager step and its top kernels",
    )
    parser.add_argument("--child", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--sample", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(
            args.child,
            args.sample,
            args.cascades,
            args.threads,
            args.warmup,
            args.steps,
            args.device,
            args.precision,
            args.cuda_graph,
            args.profile,
        )
        print(json.dumps(result))
        return

    load_before = os.getloadavg()[0]
    results: dict[str, list[dict]] = {m: [] for m in args.models}
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "batch.pt"
        make_sample(sample, args.coils, tuple(args.size))
        for _ in range(args.rounds):
            for name in args.models:
                cmd = [sys.executable, __file__, "--child", name, "--sample", str(sample)]
                cmd += ["--cascades", str(args.cascades), "--threads", str(args.threads)]
                cmd += ["--warmup", str(args.warmup), "--steps", str(args.steps)]
                cmd += ["--device", args.device, "--precision", args.precision]
                cmd += ["--cuda-graph"] if args.cuda_graph else []
                cmd += ["--profile"] if args.profile else []
                run = subprocess.run(cmd, capture_output=True, text=True)
                if run.returncode != 0:  # e.g. a model that cannot run at this precision: report, go on
                    why = (run.stderr.strip().splitlines() or ["no output"])[-1]
                    print(f"{name}: failed (exit {run.returncode}): {why}", flush=True)
                    continue
                results[name].append(json.loads(run.stdout.strip().splitlines()[-1]))
    results = {name: runs for name, runs in results.items() if runs}

    def fastest(runs: list[dict], key: str, which: int) -> float:
        return min(t[which] for r in runs for t in r[key])

    summary = {
        name: {
            "train": fastest(runs, "train", 0),
            "train_cpu": fastest(runs, "train", 1),
            "infer": fastest(runs, "infer", 0),
            "peak": max(r["peak_bytes"] for r in runs),
            "params": runs[0]["params"],
        }
        for name, runs in results.items()
    }
    ref = summary.get("monai")
    h, w = args.size
    print(
        f"B=1, {args.coils} coils, {h}x{w}, {args.cascades} cascades, {args.device} {args.precision}, "
        f"{args.threads} threads; fastest of "
        f"{args.rounds} x {args.steps} steps; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after"
    )
    columns = ("train", "train_cpu", "infer", "peak")
    print(
        f"{'model':<8} {'params':>9} {'train s':>8} {'x MONAI':>8} {'train CPU s':>12} {'x MONAI':>8} "
        f"{'infer s':>8} {'x MONAI':>8} {'peak GiB':>9} {'x MONAI':>8}"
    )
    digits = 4 if args.device != "cpu" else 2  # GPU steps take milliseconds
    for name, s in summary.items():
        ratio = {key: f"{s[key] / ref[key]:.2f}" if ref else "-" for key in columns}
        print(
            f"{name:<8} {s['params']:>9} {s['train']:>8.{digits}f} {ratio['train']:>8} {s['train_cpu']:>12.2f} "
            f"{ratio['train_cpu']:>8} {s['infer']:>8.{digits + 1}f} {ratio['infer']:>8} {s['peak'] / 2**30:>9.2f} "
            f"{ratio['peak']:>8}"
        )
    if args.profile and args.device != "cpu":
        _print_profile(results, summary)
    if args.cuda_graph and args.device != "cpu":
        ref_graph = _graph_time(results.get("monai", []), "graph_train")
        title = "training step replayed from one CUDA graph (same input; fastest):"
        _print_graph_rows(title, results, summary, "graph_train", ref_graph, "MONAI graph")
        title = (
            "training step of `medmtl fit` with cuda_graph: true (network forward and backward replayed, loss and "
            "Adam eager; fastest):"
        )
        ref_eager = summary["monai"]["train"] if "monai" in summary else None
        _print_graph_rows(title, results, summary, "fit_graph_train", ref_eager, "MONAI eager")


def _print_graph_rows(title, results, summary, key: str, ref: float | None, ref_name: str) -> None:
    print(title)
    for name, runs in results.items():
        graph = _graph_time(runs, key)
        if graph is None:
            errors = {r.get(key.removesuffix("train") + "error", "not measured") for r in runs}
            print(f"  {name:<8} not captured: {'; '.join(sorted(errors))}")
            continue
        ratio = f"{graph / ref:.2f} x {ref_name}" if ref else "-"
        print(f"  {name:<8} {graph:.4f} s ({graph / summary[name]['train']:.2f} x eager; {ratio})")


def _print_profile(results: dict[str, list[dict]], summary: dict) -> None:
    print("GPU kernel time per eager training step (torch.profiler, 3 steps):")
    for name, runs in results.items():
        if "kernel_s" not in runs[0]:
            continue
        busy = runs[0]["kernel_s"]
        print(
            f"  {name:<8} {busy:.4f} s of kernels ({busy / summary[name]['train']:.2f} of the eager step's wall)"
        )
        for kernel, t in runs[0]["top_kernels"]:
            print(f"      {t * 1e3:7.2f} ms  {kernel}")


def _graph_time(runs: list[dict], key: str) -> float | None:
    times = [t[0] for r in runs for t in r.get(key, [])]
    return min(times) if times else None


if __name__ == "__main__":
    main()
