"""Loss-balancing benchmark: every medmtl.balancing method on synthetic problems with a known optimum.

Problems (teacher networks generate the data, so each task's optimum is the teacher's own loss on the
test set, computed exactly; the student can represent the teacher):

* ``toy1000`` -- the GradNorm paper's setting: a regression whose loss is multiplied by 1000 next to a
  4-class classification, on one tanh trunk whose 6 units are exactly what the two tasks need together
  (3 each). The scaled task dominates every shared gradient, so with equal fixed weights the trunk
  serves the regression and the classification starves within the budget.
* ``toy1`` -- the control: the same problem with the factor 1, where fixed equal weights do reach both
  optima within 10 % (the regression noise is chosen for that), so the factor is the only cause of a
  failure on ``toy1000``.
* ``three`` -- three tasks on a linear trunk of rank exactly 2 + 2 + 2: a regression, a regression
  whose loss is 100x larger, and a 3-class classification.

Every method trains the same initial network on the same batches for the same number of steps (Adam).
The table gives, per task, the final test loss divided by the optimum (1.00 is optimal, 1.10 is the
10 % line), the median wall time per training step relative to ``fixed`` (single thread; on tiny
networks this overstates the share of the extra backward passes less than it would on a large trunk,
and per-call Python overhead more), and the peak CPU tensor memory allocated during one step
(torch.profiler memory events, i.e. torch's CPU allocator; not tracemalloc, which cannot see tensors).
A ``single-task`` row trains each task alone for the same number of steps, for scale.

Every step's weights, training losses and periodic test losses go to a JSON log; draw it with
``benchmarks/balancing_plot.py``.

    .venv/bin/python benchmarks/balancing.py --out runs/balancing/log.json
    .venv/bin/python benchmarks/balancing_plot.py runs/balancing/log.json runs/balancing/curves.png

``--recon-seg`` runs the real joint reconstruction + segmentation training instead, once per balancer at an
equal budget: ``medmtl fit -c configs/recon_seg_mni.yaml -c configs/recon_seg_compare.yaml`` plus a layer that
sets the balancer, short epochs (so that DWA and CoBa, which act per epoch, reweight several times) and a
validation per epoch (CoBa's input). Same seed, same draws, same steps for every row. Every final checkpoint
then goes through ``benchmarks/recon_seg_eval.py`` (whole validation slices, 4x and 8x); the training step
time and peak memory come from ``medmtl.lightning.StepTimer``.

    .venv/bin/python benchmarks/balancing.py --recon-seg --out runs/balancing_rs   # about 45 min, 2 cores
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from fit_layers import trainer_layer
from torch import Tensor, nn
from torch.nn import functional as F

from medmtl.balancing import (
    Balancer,
    CoBa,
    DynamicWeightAverage,
    FixedWeights,
    GradNorm,
    PCGrad,
    UncertaintyWeighting,
)
from medmtl.io.atomic import atomic_path

# ------------------------------------------------------------------ problems


@dataclass
class Problem:
    """A teacher that generates inputs and per-task targets, and the student architecture to fit it."""

    name: str
    tasks: tuple[str, ...]
    task_types: dict[str, str]
    loss_fns: dict[str, Callable[[Tensor, Tensor], Tensor]]
    sample: Callable[[int, torch.Generator], tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]]
    make_student: Callable[[tuple[str, ...]], Student]


class Student(nn.Module):
    """Shared trunk -> z (B, width); one linear head per task. ``trunk[-2]`` is the last shared layer."""

    def __init__(self, trunk: nn.Sequential, heads: dict[str, nn.Module]):
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleDict(heads)

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        z = self.trunk(x)
        return z, {name: head(z) for name, head in self.heads.items()}


def _mse(scale: float) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda pred, target: scale * F.mse_loss(pred, target)


def _ce(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits, labels)


def _sample_labels(logits: Tensor, g: torch.Generator) -> Tensor:
    return torch.multinomial(torch.softmax(logits, dim=1), 1, generator=g)[:, 0]


def toy(scale: float) -> Problem:
    """Regression (loss x ``scale``) + 4-class classification on a 6-unit tanh trunk.

    The regression noise (std 0.5) is set so that with ``scale=1`` fixed equal weights bring both tasks
    within 10 % of their optimum at the default budget (the ``toy1`` control): at ``scale=1000`` the scale
    is then the only cause of any failure.
    """
    g = torch.Generator().manual_seed(1000)
    d, units = 10, 6
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0][:units]  # (6, 10) orthonormal directions
    gain = 1.5
    reg_w = torch.randn(3, 1, generator=g)
    cls_w = 3.0 * torch.randn(3, 4, generator=g)
    noise = 0.5

    def sample(n, gen):
        x = torch.randn(n, d, generator=gen)
        h = torch.tanh(gain * x @ basis.T)
        clean = {"reg": h[:, :3] @ reg_w, "cls": h[:, 3:] @ cls_w}
        targets = {
            "reg": clean["reg"] + noise * torch.randn(n, 1, generator=gen),
            "cls": _sample_labels(clean["cls"], gen),
        }
        return x, targets, clean

    def make_student(tasks):
        out = {"reg": 1, "cls": 4}
        return Student(
            nn.Sequential(nn.Linear(d, units), nn.Tanh()), {t: nn.Linear(units, out[t]) for t in tasks}
        )

    return Problem(
        f"toy{scale:g}",
        ("reg", "cls"),
        {"reg": "regression", "cls": "classification"},
        {"reg": _mse(scale), "cls": _ce},
        sample,
        make_student,
    )


def three() -> Problem:
    g = torch.Generator().manual_seed(3)
    d = 12
    maps = {t: torch.randn(2, d, generator=g) / math.sqrt(d) for t in ("a", "b", "c")}
    cls_w = 3.0 * torch.randn(2, 3, generator=g)
    noise = {"a": 0.1, "b": 0.1}

    def sample(n, gen):
        x = torch.randn(n, d, generator=gen)
        clean = {"a": x @ maps["a"].T, "b": x @ maps["b"].T, "c": (x @ maps["c"].T) @ cls_w}
        targets = {t: clean[t] + noise[t] * torch.randn(n, 2, generator=gen) for t in ("a", "b")}
        targets["c"] = _sample_labels(clean["c"], gen)
        return x, targets, clean

    def make_student(tasks):
        out = {"a": 2, "b": 2, "c": 3}
        return Student(
            nn.Sequential(nn.Linear(d, 6), nn.Identity()), {t: nn.Linear(6, out[t]) for t in tasks}
        )

    return Problem(
        "three",
        ("a", "b", "c"),
        {"a": "regression", "b": "regression", "c": "classification"},
        {"a": _mse(1.0), "b": _mse(100.0), "c": _ce},
        sample,
        make_student,
    )


PROBLEMS = {"toy1000": lambda: toy(1000.0), "toy1": lambda: toy(1.0), "three": three}

# ------------------------------------------------------------------ methods


@dataclass(frozen=True)
class Method:
    build: Callable[[Problem], Balancer]
    param_lr: float | None = None  # learning rate of the balancer's own parameters; None: the network's


METHODS: dict[str, Method] = {
    "fixed": Method(lambda p: FixedWeights(dict.fromkeys(p.tasks, 1.0))),
    "uncertainty": Method(lambda p: UncertaintyWeighting(p.tasks, p.task_types)),
    # Same, with the log-variances in their own Adam parameter group at a higher learning rate.
    "uncertainty-lr0.1": Method(lambda p: UncertaintyWeighting(p.tasks, p.task_types), param_lr=0.1),
    "dwa": Method(lambda p: DynamicWeightAverage(p.tasks)),
    "gradnorm": Method(lambda p: GradNorm(p.tasks, grad_at="params")),
    "gradnorm-feat": Method(lambda p: GradNorm(p.tasks, grad_at="features")),
    "coba": Method(lambda p: CoBa(p.tasks)),
    "pcgrad": Method(lambda p: PCGrad(p.tasks)),
}


def optimum(
    problem: Problem, x: Tensor, targets: dict[str, Tensor], clean: dict[str, Tensor]
) -> dict[str, float]:
    """Each task's loss on (x, targets) of the teacher itself: the best any predictor can expect."""
    return {t: float(problem.loss_fns[t](clean[t], targets[t])) for t in problem.tasks}


@torch.no_grad()
def evaluate(problem: Problem, model: Student, x: Tensor, targets: dict[str, Tensor]) -> dict[str, float]:
    _, out = model(x)
    return {t: float(problem.loss_fns[t](out[t], targets[t])) for t in out}


# ------------------------------------------------------------------ training


@dataclass
class Settings:
    steps: int
    batch: int
    lr: float
    epoch_steps: int
    eval_every: int
    seed: int


class Run:
    """One student, its Adam optimiser and one balancer, stepped the way a MultitaskModule would."""

    def __init__(
        self,
        problem: Problem,
        balancer: Balancer,
        tasks: tuple[str, ...],
        cfg: Settings,
        param_lr: float | None = None,
    ):
        torch.manual_seed(cfg.seed)  # every method starts from the same network
        self.problem, self.balancer, self.tasks = problem, balancer, tasks
        self.model = problem.make_student(tasks)
        groups = [{"params": list(self.model.parameters())}]
        if list(balancer.parameters()):
            groups.append({"params": list(balancer.parameters()), "lr": param_lr or cfg.lr})
        self.opt = torch.optim.Adam(groups, lr=cfg.lr)
        self.shared = (
            list(self.model.trunk.parameters())
            if isinstance(balancer, PCGrad)
            else list(self.model.trunk[-2].parameters())
        )  # GradNorm: the last shared layer

    def step(self, x: Tensor, targets: dict[str, Tensor]):
        self.opt.zero_grad(set_to_none=True)
        z, out = self.model(x)
        losses = {t: self.problem.loss_fns[t](out[t], targets[t]) for t in self.tasks}
        result = self.balancer.balance(losses, shared_params=self.shared, shared_features=z)
        if result.loss is not None:
            result.loss.backward()
        self.opt.step()
        return result, {t: float(v.detach()) for t, v in losses.items()}


def train(run: Run, cfg: Settings, val: tuple, test: tuple) -> dict:
    """Train for ``cfg.steps`` steps; returns the log: per-step weights and losses, periodic test losses."""
    data = torch.Generator().manual_seed(cfg.seed + 1)  # every method sees the same batches
    log = {"weights": [], "train": [], "eval_steps": [], "test": []}
    window: list[dict[str, float]] = []
    for step in range(cfg.steps):
        x, targets, _ = run.problem.sample(cfg.batch, data)
        result, losses = run.step(x, targets)
        log["weights"].append(result.weights)
        log["train"].append(losses)
        window.append(losses)
        if (step + 1) % cfg.epoch_steps == 0:
            mean = {t: sum(w[t] for w in window) / len(window) for t in run.tasks}
            window.clear()
            run.balancer.observe_epoch(train_losses=mean, val_losses=evaluate(run.problem, run.model, *val))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            log["eval_steps"].append(step + 1)
            log["test"].append(evaluate(run.problem, run.model, *test))
    log["final"] = log["test"][-1]
    return log


def seconds_per_step(
    runs: dict[str, Run], cfg: Settings, rounds: int = 10, steps: int = 20
) -> dict[str, float]:
    """Median seconds per training step of each run, timed in interleaved rounds so that other load on a
    shared machine hits every method alike (the runs continue from wherever they are)."""
    x, targets, _ = next(iter(runs.values())).problem.sample(
        cfg.batch, torch.Generator().manual_seed(cfg.seed + 3)
    )
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            for _ in range(steps):
                start = time.perf_counter()
                run.step(x, targets)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_step_memory(run: Run, cfg: Settings) -> int:
    """Peak bytes torch's CPU allocator holds during one training step, above what was live before it."""
    x, targets, _ = run.problem.sample(cfg.batch, torch.Generator().manual_seed(cfg.seed + 2))
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        run.step(x, targets)
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    memory = sorted((e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    if not memory:
        return 0
    # "Total Allocated" counts every block the allocator reported since profiling was first enabled in this
    # process; the total just before the step's first event is the baseline.
    baseline = memory[0]["args"]["Total Allocated"] - memory[0]["args"]["Bytes"]
    return max(e["args"]["Total Allocated"] for e in memory) - baseline


# ------------------------------------------------------------------ report


def run_problem(problem: Problem, methods: list[str], cfg: Settings) -> dict:
    val = problem.sample(512, torch.Generator().manual_seed(cfg.seed + 10))[:2]
    test_x, test_t, test_clean = problem.sample(8192, torch.Generator().manual_seed(cfg.seed + 20))
    best = optimum(problem, test_x, test_t, test_clean)
    runs, logs = {}, {}
    for name in methods:
        method = METHODS[name]
        runs[name] = Run(problem, method.build(problem), problem.tasks, cfg, method.param_lr)
        logs[name] = train(runs[name], cfg, val, (test_x, test_t))
    for name, seconds in seconds_per_step(runs, cfg).items():
        logs[name]["seconds_per_step"] = seconds
        logs[name]["peak_step_bytes"] = peak_step_memory(runs[name], cfg)
    alone = {}
    for t in problem.tasks:
        alone[t] = train(Run(problem, FixedWeights({t: 1.0}), (t,), cfg), cfg, val, (test_x, test_t))[
            "final"
        ][t]
    return {"optimum": best, "runs": logs, "single_task": alone}


def table(problem: Problem, result: dict) -> str:
    best, runs = result["optimum"], result["runs"]
    base = runs["fixed"]["seconds_per_step"]  # main() always runs "fixed"
    cols = [f"{t}/opt" for t in problem.tasks]
    optima = ", ".join(f"{t}={best[t]:.4g}" for t in problem.tasks)
    lines = [
        f"## {problem.name}: final test loss / optimum ({optima}); fixed takes {1e3 * base:.2f} ms/step",
        "| method | " + " | ".join(cols) + " | all <=1.10 | time/step vs fixed | peak step memory (KiB) |",
        "|---" * (len(cols) + 4) + "|",
    ]
    for name, log in runs.items():
        ratios = [log["final"][t] / best[t] for t in problem.tasks]
        lines.append(
            f"| {name} | "
            + " | ".join(f"{r:.3f}" for r in ratios)
            + f" | {'yes' if max(ratios) <= 1.10 else 'no'} | {log['seconds_per_step'] / base:.2f}"
            + f" | {log['peak_step_bytes'] / 1024:.0f} |"
        )
    alone = [result["single_task"][t] / best[t] for t in problem.tasks]
    lines.append(
        "| single-task (each alone) | "
        + " | ".join(f"{r:.3f}" for r in alone)
        + f" | {'yes' if max(alone) <= 1.10 else 'no'} | - | - |"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------ real recon + seg

_TASKS = ["recon", "seg"]
RECON_SEG_BALANCERS: dict[str, dict] = {
    "fixed": {"class_path": "medmtl.balancing.FixedWeights"},
    "uncertainty": {
        "class_path": "medmtl.balancing.UncertaintyWeighting",
        "init_args": {"tasks": _TASKS, "task_types": {"recon": "regression", "seg": "classification"}},
    },
    "dwa": {"class_path": "medmtl.balancing.DynamicWeightAverage", "init_args": {"tasks": _TASKS}},
    "gradnorm": {"class_path": "medmtl.balancing.GradNorm", "init_args": {"tasks": _TASKS}},
    "coba": {"class_path": "medmtl.balancing.CoBa", "init_args": {"tasks": _TASKS}},
    "pcgrad": {"class_path": "medmtl.balancing.PCGrad", "init_args": {"tasks": _TASKS}},
}


def recon_seg_layer(method: str, run: Path, steps: int, epoch_steps: int) -> dict:
    """The config layered last for one balancer (JSON is YAML): balancer, output folder and budget."""
    return {
        "trainer": {**trainer_layer(run, steps, epoch_steps), "limit_val_batches": 2},
        "model": {
            "balancer": RECON_SEG_BALANCERS[method],
            "scheduler": {
                "class_path": "torch.optim.lr_scheduler.CosineAnnealingLR",
                "init_args": {"T_max": steps},
            },
        },
        # batch 2 (recon_seg_compare.yaml): an epoch of epoch_steps steps.
        "data": {"samples_per_epoch": 2 * epoch_steps},
    }


def final_weights(run: Path) -> dict[str, float]:
    """The last logged ``train/weight_<task>`` of a run's metrics.csv."""
    import csv

    last: dict[str, float] = {}
    with open(run / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            for t in _TASKS:
                value = row.get(f"train/weight_{t}")
                if value:
                    last[t] = float(value)
    return last


def recon_seg(out: Path, args: argparse.Namespace) -> int:
    import subprocess

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from recon_seg_eval import evaluate

    repo = Path(__file__).resolve().parent.parent
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    methods = list(dict.fromkeys(["fixed", *args.rs_methods]))
    threads = max(args.threads, min(os.cpu_count() or 1, 2))
    saved = out / "balancing_recon_seg.json"
    if args.rs_timing_only:
        if not saved.is_file():
            print(f"balancing.py: {saved}: no finished runs to time again", file=sys.stderr)
            return 2
        result = json.loads(saved.read_text())
        methods = list(result["timing"])
    else:
        checkpoints, timing, weights = {}, {}, {}
        for method in methods:
            run = out / method
            layer = out / f"{method}.yaml"
            layer.write_text(
                json.dumps(recon_seg_layer(method, run, args.rs_steps, args.rs_epoch_steps), indent=1)
            )
            cmd = [sys.executable, "-m", "medmtl.cli", "fit", "-c", "configs/recon_seg_mni.yaml"]
            cmd += ["-c", "configs/recon_seg_compare.yaml", "-c", str(layer)]
            print(f"== {method}: {' '.join(cmd[2:])}", flush=True)
            subprocess.run(cmd, cwd=repo, check=True)
            checkpoints[method] = run / "checkpoints" / "last.ckpt"
            timing[method] = json.loads((run / "step_times.json").read_text())
            weights[method] = final_weights(run)
        result = {
            "steps": args.rs_steps,
            "epoch_steps": args.rs_epoch_steps,
            "rows": evaluate(checkpoints, [4.0, 8.0], threads),
            "timing": {m: {k: v for k, v in t.items() if k != "seconds"} for m, t in timing.items()},
            "final_weights": weights,
        }
    print("== interleaved step timing", flush=True)
    result["interleaved_s"] = recon_seg_step_times(methods, args.rs_timing_rounds, 3, threads)
    with atomic_path(saved) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    print()
    print(recon_seg_table(result))
    return 0


def recon_seg_step_times(methods: list[str], rounds: int, steps: int, threads: int) -> dict[str, float]:
    """Median seconds per training step of the recon+seg network under each balancer, timed in interleaved
    rounds on one fixed batch (the same network, optimiser and batch as the runs), so that other load on
    a shared machine hits every method alike. The first round is warm-up and left out."""
    import importlib

    from medmtl.data.datamodule import collate_samples
    from medmtl.data.mni import SimulationOptions
    from medmtl.data.online import SimulatedKSpaceDataset
    from medmtl.keys import Keys
    from medmtl.lightning.module import with_acs
    from medmtl.lightning.shared import shared_parameters
    from medmtl.models.recon_seg import ReconSegNet

    torch.set_num_threads(threads)
    options = SimulationOptions(
        num_coils=8, accelerations=(4.0, 8.0), center_fractions=(0.08, 0.04), mask="equispaced"
    )
    data = SimulatedKSpaceDataset(split="train", options=options, crop=(128, 128), samples_per_epoch=2)
    batch = with_acs(collate_samples([data[(0, 0)], data[(0, 1)]]))
    steppers = {}
    for method in methods:
        spec = RECON_SEG_BALANCERS[method]
        module, _, name = spec["class_path"].rpartition(".")
        balancer = getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))
        torch.manual_seed(0)
        net = ReconSegNet(mode="joint", num_cascades=4, num_classes=3)
        opt = torch.optim.Adam([*net.parameters(), *balancer.parameters()], lr=2e-3)
        steppers[method] = (net, balancer, opt, [])

    def step(net, balancer, opt, shared) -> None:
        opt.zero_grad(set_to_none=True)
        out = net(batch[Keys.KSPACE], batch[Keys.MASK], batch[Keys.ACS], target=batch[Keys.TARGET])
        losses = net.compute_losses(out, batch)
        if balancer.needs_shared and not shared:
            shared.extend(shared_parameters(losses, net.parameters()))
        result = balancer.balance(
            losses,
            shared_params=shared or None,
            shared_features=out.recon if balancer.needs_shared else None,
        )
        if result.loss is not None:
            result.loss.backward()
        opt.step()

    times: dict[str, list[float]] = {m: [] for m in methods}
    names = list(steppers)
    for r in range(rounds + 1):
        # Each round starts with another method, so that no method always follows the same one.
        for method in names[r % len(names) :] + names[: r % len(names)]:
            net, balancer, opt, shared = steppers[method]
            for _ in range(steps):
                start = time.perf_counter()
                step(net, balancer, opt, shared)
                if r:
                    times[method].append(time.perf_counter() - start)
    return {m: statistics.median(t) for m, t in times.items()}


def recon_seg_table(result: dict) -> str:
    by = {(r["method"], r["acceleration"]): r for r in result["rows"]}
    timing, weights, inter = result["timing"], result["final_weights"], result["interleaved_s"]
    base = timing["fixed"]["median_s"]
    lines = [
        f"Equal budget: {result['steps']} steps, epochs of {result['epoch_steps']} steps, joint mode, "
        f"batch 2, 128 x 128 windows; fixed takes {base:.2f} s/step in its run, "
        f"{inter['fixed']:.2f} s/step interleaved",
        "| balancer | 4x SSIM | 4x PSNR | 4x Dice GM / WM | 8x SSIM | 8x PSNR | 8x Dice GM / WM "
        "| final weights recon / seg | time/step vs fixed (in run) | (interleaved) | peak RSS MiB |",
        "|---" * 11 + "|",
    ]
    for method, t in timing.items():
        cells = []
        for accel in (4.0, 8.0):
            r = by[(method, accel)]
            cells += [f"{r['ssim']:.3f}", f"{r['psnr']:.2f}", f"{r['dice_gm']:.3f} / {r['dice_wm']:.3f}"]
        w = weights.get(method, {})
        ws = " / ".join(f"{w[k]:.3g}" for k in _TASKS if k in w) or "-"
        lines.append(
            f"| {method} | "
            + " | ".join(cells)
            + f" | {ws} | {t['median_s'] / base:.2f} | {inter[method] / inter['fixed']:.2f}"
            + f" | {t['peak_rss_mib']:.0f} |"
        )
    for accel in (4.0, 8.0):
        r = by[("zero-filled", accel)]
        lines.append(f"(zero-filled {accel:g}x: SSIM {r['ssim']:.3f}, PSNR {r['psnr']:.2f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate of every network")
    parser.add_argument("--epoch-steps", type=int, default=50, help="steps per epoch for DWA and CoBa")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (tiny tensors: 1 is fastest)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON log for the plot (default runs/balancing/log.json); with --recon-seg, the runs folder "
        "(default runs/balancing_recon_seg)",
    )
    parser.add_argument(
        "--recon-seg", action="store_true", help="the real recon+seg training at equal budget, per balancer"
    )
    parser.add_argument("--rs-steps", type=int, default=300, help="--recon-seg: training steps per balancer")
    parser.add_argument("--rs-epoch-steps", type=int, default=20, help="--recon-seg: steps per epoch")
    parser.add_argument(
        "--rs-timing-rounds",
        type=int,
        default=6,
        help="--recon-seg: interleaved timing rounds (3 steps each)",
    )
    parser.add_argument(
        "--rs-timing-only",
        action="store_true",
        help="--recon-seg: reuse the finished runs in --out; only time steps again and print the table",
    )
    parser.add_argument(
        "--rs-methods", nargs="+", default=list(RECON_SEG_BALANCERS), choices=list(RECON_SEG_BALANCERS)
    )
    args = parser.parse_args(argv)
    if args.recon_seg:
        return recon_seg(args.out or Path("runs/balancing_recon_seg"), args)
    args.out = args.out or Path("runs/balancing/log.json")
    if "fixed" not in args.methods:
        args.methods.insert(0, "fixed")  # the time reference
    torch.set_num_threads(args.threads)
    cfg = Settings(args.steps, args.batch, args.lr, args.epoch_steps, args.eval_every, args.seed)

    log = {"settings": vars(cfg), "problems": {}}
    for name in args.problems:
        problem = PROBLEMS[name]()
        result = run_problem(problem, args.methods, cfg)
        log["problems"][name] = {"tasks": list(problem.tasks), **result}
        print(table(problem, result), end="\n\n", flush=True)
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(log))
    print(f"log: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
