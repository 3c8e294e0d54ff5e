"""``MultitaskModule``: the thin LightningModule around a multitask network.

The network owns its forward and its per-task losses (``model.compute_losses(out, batch) -> {task: loss}``,
``model.tasks``); the balancer turns the losses into one step (``medmtl.balancing``); this module only wires
them together, steps the optimiser, logs, and evaluates. Metric names (``stage`` = ``val`` or ``test``):

- ``train/loss_<task>``, ``train/weight_<task>``, ``train/grad_norm_<task>`` (where the balancer computes
  it) and ``train/loss`` (the balanced loss) every step;
- ``<stage>/loss_<task>`` and ``<stage>/loss`` (weighted with the balancer's current weights) per epoch;
- ``<stage>/ssim``, ``<stage>/psnr``, ``<stage>/nmse`` when the model has the ``recon`` task and the batch a
  target; ``<stage>/dice_<class>``, ``<stage>/hd95_<class>``, ``<stage>/dice_mean`` when it has ``seg`` and the
  batch a segmentation (``medmtl.metrics``).

Optimisation is always manual, so every balancer takes the same path: those that run the backward
themselves (PCGrad) set ``.grad`` inside ``balance``, the others return a loss for ``manual_backward``. The
module therefore owns gradient accumulation and clipping (Lightning refuses the Trainer's under manual
optimisation); gradients are averaged over the accumulated batches before clipping.

Under DDP, gradients are averaged over the processes inside the backward, as under automatic optimisation,
also for the balancers that run the backward themselves; ``docs/distributed.md`` says what that means for the
balancers that take gradients. A checkpoint
also holds every process's random generators, running loss means and balancer state
(``medmtl.lightning.resume``), which a resumed run restores when training starts, for an exact resume.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torchmetrics import MeanMetric

from medmtl.balancing import Balancer, FixedWeights
from medmtl.errors import ConfigError, InputError
from medmtl.keys import MNI_CLASSES, Keys
from medmtl.lightning.cuda_graph import GraphedForward, check_graphable
from medmtl.lightning.lesion_eval import LesionEvaluation
from medmtl.lightning.panels import save_panel
from medmtl.lightning.resume import gather, rank_state, restore_rank_state
from medmtl.lightning.shared import shared_parameters
from medmtl.metrics import ReconMetrics, SegMetrics
from medmtl.transforms.acs import acs_mask_from_mask
from medmtl.transforms.coils import rss_image
from medmtl.transforms.intensity import denormalize
from medmtl.transforms.spatial import center_crop_or_pad

# Checkpoint entry of what an exact resume needs beyond Lightning's own entries (see medmtl.lightning.resume).
RESUME_KEY = "medmtl_resume"


def _is_config(value: Any) -> bool:
    """Plain configuration data (what LightningCLI records), as opposed to live objects."""
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_config(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_is_config(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def with_acs(batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` with ``Keys.ACS`` (B, 1, Hm, W, 1) estimated from ``Keys.MASK`` where it is missing.

    The ACS search loops over data-dependent sizes, so it runs here, on the host, outside the network's graph.
    """
    if Keys.ACS in batch or Keys.MASK not in batch:
        return batch
    return {**batch, Keys.ACS: torch.stack([acs_mask_from_mask(m) for m in batch[Keys.MASK]])}


def freeze_except(model: nn.Module, names: Sequence[str]) -> None:
    """Freeze every parameter of ``model`` outside its submodules ``names``."""
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules or not n]
    if unknown or not names:
        raise ConfigError(
            "train_only",
            f"{list(unknown or names)}: name submodules of {type(model).__name__}, e.g. "
            f"{', '.join(n for n, _ in model.named_children())}",
        )
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(name == n or name.startswith(n + ".") for n in names))


def load_initial_weights(model: nn.Module, path: str, skip: Sequence[str] = ()) -> None:
    """Copy the network weights of the checkpoint ``path`` into ``model`` (``MultitaskModule``'s
    ``init_weights``): by name, a grown input-channel dimension filled in its leading channels. Names that
    match a ``skip`` pattern (``fnmatch``) are not copied and may be on one side only: the network's keep
    their initial values, the checkpoint's are dropped."""
    from medmtl.inference import _load_checkpoint

    def skipped(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in skip)

    stored = {
        k.removeprefix("model."): v
        for k, v in _load_checkpoint(Path(path))["state_dict"].items()
        if k.startswith("model.")
    }
    own = model.state_dict()
    new, dropped = sorted(set(own) - set(stored)), sorted(set(stored) - set(own))
    missing, unexpected = [n for n in new if not skipped(n)], [n for n in dropped if not skipped(n)]
    if missing or unexpected:
        raise InputError(
            path,
            f"init_weights: names differ from the network's (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]})",
        )
    grown = []
    with torch.no_grad():
        for name, tensor in own.items():
            if name not in stored or skipped(name):
                continue
            value = stored[name]
            if value.shape == tensor.shape:
                tensor.copy_(value)
            elif (
                value.dim() == tensor.dim() >= 2
                and value.shape[0] == tensor.shape[0]
                and (value.shape[1] < tensor.shape[1] and value.shape[2:] == tensor.shape[2:])
            ):
                tensor[:, : value.shape[1]].copy_(value)
                grown.append(f"{name} ({value.shape[1]} -> {tensor.shape[1]} inputs)")
            else:
                raise InputError(
                    path, f"init_weights: {name} is {tuple(value.shape)} there and {tuple(tensor.shape)} here"
                )
    kept = sorted(n for n in own if n not in stored or skipped(n))
    rank_zero_info(
        f"init_weights: {len(own) - len(kept)} of {len(own)} tensors from {path}"
        + (f"; grown, new inputs keep this network's weights: {', '.join(grown)}" if grown else "")
        + (f"; kept at their initial values: {', '.join(kept)}" if kept else "")
        + (f"; dropped from the checkpoint: {', '.join(dropped)}" if dropped else "")
    )


class MultitaskModule(LightningModule):
    """Trains and evaluates a multitask network (see the module docstring).

    Args:
        model: the network: ``model(kspace, mask, acs_mask, target=None)`` -> an output with ``recon``
            (B, H, W) and ``seg_logits`` (B, K, H, W) (either may be None), ``model.compute_losses(out,
            batch)`` and ``model.tasks`` (e.g. ``medmtl.models.ReconSegNet``).
        balancer: combines the task losses; default ``FixedWeights()`` (every task weighs 1).
        optimizer: builds the optimiser from the parameters; default Adam (lr 1e-3).
        scheduler: builds a learning-rate scheduler from the optimiser, or None.
        scheduler_interval: step the scheduler every optimiser ``"step"`` or every ``"epoch"``.
        gradient_clip_val: clip the global gradient norm to this value; None does not clip.
        accumulate_grad_batches: batches whose gradients are averaged into one optimiser step.
        class_names: segmentation class names, index = label, background first (for metric names, panels
            and prediction files).
        panel_every_n_val_steps: write a PNG panel of the first slice of every N-th validation or test
            batch (batch 0 included) under ``<log_dir>/panels`` (``val_epoch<E>_batch<B>.png`` during fit,
            ``validate_batch<B>.png`` and ``test_batch<B>.png`` for those commands); 0 writes none.
        lesion_refined: lesion networks are scored with their score-refinement outputs where they have them;
            False scores the raw detection and tag heads instead (the refinement ablation,
            ``benchmarks/lesion_ablation.py``).
        init_weights: a ``medmtl fit`` checkpoint (full or slim) whose network weights ``fit`` starts from: a
            fine-tune, not a resume (no optimiser state, step or data position; ``--ckpt_path`` resumes, and
            then wins). Weights match by name. A convolution that reads more input channels than the stored one
            (a head given new inputs) takes the stored weights in its leading channels and keeps its own for
            the rest; any other difference is one error naming the weight.
        train_only: names of the network's submodules to train (e.g. ``[tag_head, refiner]``); every other
            parameter is frozen. None trains all.
        init_skip: ``fnmatch`` patterns of weight names not taken from ``init_weights`` and allowed on one side
            only (a changed layer, e.g. ``["cascades.*.dc.*"]`` to start a ``dc: cg`` network from a
            ``dc: gradient`` one): the network's keep their initial values, the checkpoint's are dropped; both
            are logged.
        cuda_graph: on one CUDA device, replay the network's training forward and backward from CUDA graphs
            (``medmtl.lightning.cuda_graph``): the host launches a few graphs instead of thousands of kernels
            per step. Checked before training; any other device is one ConfigError.
    """

    def __init__(
        self,
        model: nn.Module,
        balancer: Balancer | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
        gradient_clip_val: float | None = None,
        accumulate_grad_batches: int = 1,
        class_names: Sequence[str] = MNI_CLASSES,
        panel_every_n_val_steps: int = 50,
        lesion_refined: bool = True,
        init_weights: str | None = None,
        train_only: Sequence[str] | None = None,
        init_skip: Sequence[str] = (),
        cuda_graph: bool = False,
    ):
        super().__init__()
        # Under LightningCLI the hyper-parameters are the parsed config (class paths and init args), which is
        # what lets a checkpoint rebuild its network (medmtl.inference). Built in Python they are the objects
        # themselves, which do not belong in a checkpoint: keep only the plain values then.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters()
        objects = [name for name, value in self.hparams.items() if not _is_config(value)]
        if objects:
            self.save_hyperparameters(ignore=objects)
        if scheduler_interval not in ("step", "epoch"):
            raise ConfigError("scheduler_interval", f"must be 'step' or 'epoch', got {scheduler_interval!r}")
        if gradient_clip_val is not None and not gradient_clip_val > 0:
            raise ConfigError("gradient_clip_val", f"must be > 0 or null, got {gradient_clip_val}")
        if accumulate_grad_batches < 1:
            raise ConfigError("accumulate_grad_batches", f"must be >= 1, got {accumulate_grad_batches}")
        if len(class_names) < 2:
            raise ConfigError(
                "class_names", f"need background and at least one class, got {list(class_names)}"
            )
        if panel_every_n_val_steps < 0:
            raise ConfigError("panel_every_n_val_steps", f"must be >= 0, got {panel_every_n_val_steps}")
        self.automatic_optimization = False
        self.model = model
        self.init_weights = init_weights
        self.init_skip = tuple(init_skip)
        if train_only is not None:
            freeze_except(model, train_only)
        self.balancer = balancer if balancer is not None else FixedWeights()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.gradient_clip_val = gradient_clip_val
        self.accumulate_grad_batches = accumulate_grad_batches
        self.class_names = tuple(class_names)
        self.panel_every_n_val_steps = panel_every_n_val_steps
        self.tasks = tuple(model.tasks)
        self.recon_metrics = ReconMetrics()
        self.seg_metrics = SegMetrics(self.class_names)
        # Lesion networks (a detection task) are evaluated on decoded detections instead.
        self.lesion_eval = None
        if "det" in self.tasks:
            tag_names = model.tag_names if "tag" in self.tasks else ()  # a detection-only network has no tags
            self.lesion_eval = LesionEvaluation(tag_names, refined=lesion_refined)
        # Epoch means of each task loss (for balancer.observe_epoch and the val/test logs) and of the weighted
        # total, weighted by batch size. torchmetrics reduces them over the processes, each sample counting once
        # (Lightning's own sync_dist mean truncates the summed batch sizes of uneven shards to an integer).
        self.train_means = nn.ModuleDict({t: MeanMetric(nan_strategy="ignore") for t in self.tasks})
        self.eval_means = nn.ModuleDict({t: MeanMetric(nan_strategy="ignore") for t in self.tasks})
        self.eval_total = MeanMetric(nan_strategy="ignore")
        self._last_val_losses: dict[str, float] | None = None
        self._shared: list[nn.Parameter] | None = None
        self._resumed_rank_state: dict[str, Any] | None = None
        self._panel_dir: Path | None = None
        self.cuda_graph = cuda_graph
        self._graphed: GraphedForward | None = None

    # ------------------------------------------------------------------ setup
    def configure_optimizers(self):
        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.init_weights is not None:
            load_initial_weights(self.model, self.init_weights, self.init_skip)
        if self.balancer.does_backward and self.trainer.precision in ("16-mixed", "16"):
            # Such a balancer calls backward itself, past the fp16 loss scaler.
            raise ConfigError(
                "trainer.precision", f"{type(self.balancer).__name__} needs 32 or bf16, not fp16"
            )
        if stage == "fit" and self.cuda_graph:
            check_graphable(self)
            self._graphed = GraphedForward(self.model)
        # trainer.log_dir is a broadcast from rank 0, so every process asks here, not only rank 0 later.
        self._panel_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "panels"

    def teardown(self, stage: str) -> None:
        if stage == "fit":
            self._graphed = None  # the graphs' memory pool and captured buffers go with it

    @property
    def panel_dir(self) -> Path:
        """Where the validation and test panels go: ``<log_dir>/panels`` (known once the trainer set up)."""
        if self._panel_dir is None:
            raise RuntimeError("panel_dir is known once a trainer has set the module up")
        return self._panel_dir

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Mapping[str, Any]):
        """Runs the network on a batch dict: its own ``forward_batch(batch)`` where it has one (``LesionNet``),
        else ``Keys.KSPACE``, ``Keys.MASK``, ``Keys.ACS`` and the optional target."""
        forward_batch = getattr(self.model, "forward_batch", None)
        if forward_batch is not None:
            return forward_batch(batch)
        return self.model(*_network_args(batch))

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self(batch) if self._graphed is None else self._graphed(*_network_args(batch))
        losses = self.model.compute_losses(out, batch)
        size = _batch_size(batch)
        shared_params = None
        if self.balancer.needs_shared:
            if self._shared is None:  # the graph's structure is the same every step
                self._shared = shared_parameters(losses, self.model.parameters())
            shared_params = self._shared
        own_backward = sum(losses.values()) if self.balancer.does_backward else None
        if own_backward is not None:
            # Under manual optimisation Lightning readies DDP's gradient all-reduce in manual_backward only; a
            # balancer that runs its own backward gets the same preparation here, or every process would keep
            # its own gradients. Its per-task autograd.grad calls do not trigger the all-reduce.
            self.trainer.strategy.pre_backward(own_backward)
        result = self.balancer.balance(
            losses,
            shared_params=shared_params,
            shared_features=getattr(out, "recon", None) if self.balancer.needs_shared else None,
        )
        if own_backward is not None:
            self.trainer.strategy.post_backward(own_backward)
        if result.loss is not None:
            self.manual_backward(result.loss)
        if (batch_idx + 1) % self.accumulate_grad_batches == 0 or self.trainer.is_last_batch:
            self._optimizer_step()

        logs = {f"train/loss_{t}": v.detach() for t, v in losses.items()}
        logs.update({f"train/weight_{t}": w for t, w in result.weights.items()})
        logs.update({f"train/grad_norm_{t}": g for t, g in (result.grad_norms or {}).items()})
        total = result.loss if result.loss is not None else self._weighted(losses, result.weights)
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=size)
        self.log_dict(logs, batch_size=size)
        for task, loss in losses.items():
            self.train_means[task].update(loss.detach())

    def _optimizer_step(self) -> None:
        optimizer = self.optimizers()
        if self.accumulate_grad_batches > 1:
            for p in self.parameters():
                if p.grad is not None:
                    p.grad.div_(self.accumulate_grad_batches)
        if self.gradient_clip_val is not None:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm"
            )
        optimizer.step()
        # None, not zeros: a CUDA-graph replay hands back gradients in the graph's own buffers, which .grad may
        # alias; zeroing in place and accumulating the next replay into them would double every gradient.
        optimizer.zero_grad(set_to_none=True)
        scheduler = self.lr_schedulers()
        if scheduler is not None and self.scheduler_interval == "step":
            scheduler.step()

    def on_train_epoch_end(self) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is not None and self.scheduler_interval == "epoch":
            scheduler.step()
        train = _finite(self._epoch_means(self.train_means))
        self.balancer.observe_epoch(train_losses=train or None, val_losses=self._last_val_losses)
        self._last_val_losses = None

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def _evaluate(self, batch: dict[str, Any], batch_idx: int, stage: str) -> None:
        out = self(batch)
        size = _batch_size(batch)
        if self.lesion_eval is not None:
            self._update_losses(self.model.compute_losses(out, batch), size)
            self.lesion_eval.update(out, batch)
            return
        has_target, has_seg = Keys.TARGET in batch, Keys.SEG in batch
        if has_target and (has_seg or "seg" not in self.tasks):
            self._update_losses(self.model.compute_losses(out, batch), size)
        recon = out.recon if "recon" in self.tasks else None
        seg = self._labels(out.seg_logits) if "seg" in self.tasks else None
        if recon is not None and has_target:
            target = batch[Keys.TARGET]
            self.recon_metrics.update(center_crop_or_pad(recon, target.shape[-2:], dims=(-2, -1)), target)
        if seg is not None and has_seg:
            truth = batch[Keys.SEG]
            self.seg_metrics.update(center_crop_or_pad(seg, truth.shape[-2:], dims=(-2, -1)), truth)
        every = self.panel_every_n_val_steps
        if (
            every
            and batch_idx % every == 0
            and not self.trainer.sanity_checking
            and self.trainer.is_global_zero
        ):
            command = self.trainer.state.fn.value
            name = f"{stage}_epoch{self.current_epoch:03d}" if command == "fit" else command
            self._panel(batch, out, seg, f"{name}_batch{batch_idx:05d}.png")

    def _update_losses(self, losses: Mapping[str, Tensor], size: int) -> None:
        for task, loss in losses.items():
            self.eval_means[task].update(loss.detach(), weight=size)
        self.eval_total.update(self._weighted(losses, self.balancer.weights_dict()), weight=size)

    def _labels(self, seg_logits: Tensor | None) -> Tensor | None:
        if seg_logits is None:
            return None
        if seg_logits.shape[1] != len(self.class_names):
            raise ConfigError(
                "class_names",
                f"{len(self.class_names)} names {list(self.class_names)} for {seg_logits.shape[1]} segmentation classes",
            )
        return seg_logits.argmax(dim=1)

    def _panel(self, batch: dict[str, Any], out, seg: Tensor | None, name: str) -> None:
        target, truth = batch.get(Keys.TARGET), batch.get(Keys.SEG)
        zero_filled = rss_image(batch[Keys.KSPACE][:1])
        recon = out.recon if out.recon is not None else zero_filled
        size = tuple((target if target is not None else recon)[0].shape[-2:])

        def crop(x: Tensor | None) -> Tensor | None:
            return None if x is None else center_crop_or_pad(x[0].detach().float(), size, dims=(-2, -1))

        save_panel(
            self.panel_dir / name,
            zero_filled=crop(zero_filled),
            recon=crop(recon),
            seg=crop(seg),
            target=crop(target),
            seg_target=crop(truth),
            class_names=self.class_names,
            title=f"{batch[Keys.FNAME][0]} slice {batch[Keys.SLICE][0]}",
        )

    def on_validation_epoch_end(self) -> None:
        means = self._log_metrics("val")
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self._last_val_losses = _finite(means) or None

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _log_metrics(self, stage: str) -> dict[str, float]:
        """Logs the epoch's losses and metrics, resets them, and returns the mean loss of each task."""
        losses = self._epoch_means(self.eval_means)
        values: dict[str, float | Tensor] = {f"{stage}/loss_{t}": v for t, v in losses.items()}
        values.update({f"{stage}/loss": v for v in self._epoch_means({"total": self.eval_total}).values()})
        for metric in (self.recon_metrics, self.seg_metrics):
            if metric.update_called:
                values.update({f"{stage}/{k}": v.float() for k, v in metric.compute().items()})
            metric.reset()
        if self.lesion_eval is not None and self.lesion_eval.update_called:
            scalars, result = self.lesion_eval.compute(stage, choose_thresholds=stage == "val")
            values.update(scalars)
            if stage == "test" and self.trainer.is_global_zero:
                self.lesion_eval.plot(result, self.panel_dir / "test_lesion_metrics.png")
            self.lesion_eval.reset()
        if values:
            # compute() has already reduced the sums over the processes (torchmetrics), so every process holds
            # the same values; a max over those copies returns them unchanged and marks them as synchronised.
            self.log_dict(values, sync_dist=True, reduce_fx="max")
        return losses

    # ------------------------------------------------------------------ prediction
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """-> ``reconstruction`` (B, H, W) float32 in the input's intensity units (``Keys.SCALE`` undone; the
        zero-filled RSS image for a segmentation-only model), ``segmentation`` (B, H, W) uint8 (None without
        a segmentation task), and the batch's file names and slice indices."""
        out = self(batch)
        recon = (out.recon if out.recon is not None else rss_image(batch[Keys.KSPACE])).float()
        if Keys.SCALE in batch:
            recon = denormalize(recon, batch[Keys.SCALE])
        seg = self._labels(out.seg_logits) if "seg" in self.tasks else None
        return {
            "reconstruction": recon,
            "segmentation": None if seg is None else seg.to(torch.uint8),
            Keys.FNAME.value: batch[Keys.FNAME],
            Keys.SLICE.value: batch[Keys.SLICE],
        }

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Every process runs this hook (and only rank 0 writes the file), so each can hand in its own state.
        checkpoint[RESUME_KEY] = {
            "ranks": gather(rank_state(self.train_means, self.balancer)),
            "last_val_losses": self._last_val_losses,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(RESUME_KEY)
        trainer = self._trainer
        if saved is None or trainer is None or trainer.state.fn != "fit":
            return  # only a resumed fit continues from this state
        self._last_val_losses = saved["last_val_losses"]
        ranks = saved["ranks"]
        if len(ranks) == trainer.world_size:
            self._resumed_rank_state = ranks[trainer.global_rank]
        else:
            warnings.warn(
                f"the checkpoint was written by {len(ranks)} processes and this run has {trainer.world_size}: "
                "each process's random generators, running losses and balancer state start afresh, so the "
                "resume is not exact",
                stacklevel=2,
            )

    def on_train_start(self) -> None:
        # Restored as late as possible before the first step: nothing between the save and the next step of the
        # interrupted run drew from these generators (the loaders have their own, MultitaskDataModule), while
        # the resumed run has since built its model and run its sanity check.
        if self._resumed_rank_state is not None:
            restore_rank_state(self._resumed_rank_state, self.train_means, self.balancer)
            self._resumed_rank_state = None

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _weighted(losses: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
        return sum(weights.get(t, 1.0) * v.detach() for t, v in losses.items())

    @staticmethod
    def _epoch_means(means: Mapping[str, MeanMetric]) -> dict[str, float]:
        """Name -> mean since the last reset, over every process (names never updated left out); resets them."""
        values = {}
        for name, metric in means.items():
            if metric.update_called:
                values[name] = float(metric.compute())
            metric.reset()
        return values


def _network_args(batch: Mapping[str, Any]) -> tuple[Tensor, ...]:
    """``MultitaskModule.forward``'s network arguments, positional: k-space, mask, ACS mask[, target]."""
    batch = with_acs(dict(batch))
    target = batch.get(Keys.TARGET)
    return (batch[Keys.KSPACE], batch[Keys.MASK], batch[Keys.ACS]) + (() if target is None else (target,))


def _batch_size(batch: Mapping[str, Any]) -> int:
    """Samples in a batch: its file-name list (every medmtl batch has one), else the k-space's first axis."""
    names = batch.get(Keys.FNAME)
    return len(names) if isinstance(names, (list, tuple)) else int(batch[Keys.KSPACE].shape[0])


def _finite(values: Mapping[str, float]) -> dict[str, float]:
    """The finite entries of ``values`` (what a balancer may see)."""
    return {k: v for k, v in values.items() if math.isfinite(v)}
