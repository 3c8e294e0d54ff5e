"""``medmtl fit|validate|test|predict``: LightningCLI over ``MultitaskModule`` and ``MultitaskDataModule``.

The YAML files in ``configs/`` hold the whole recipe (``medmtl fit -c configs/recon_seg_mni.yaml``); any key
can be overridden on the command line (``--trainer.max_steps 10``). ``--help`` lists them all.

A user error (an unknown key, a value of the wrong type, a missing file, a configuration the classes
reject) prints one line, ``medmtl <command>: error: <what>``, and exits with code 2 instead of a traceback; a
checkpoint given to ``--ckpt_path`` that cannot be read is one such error (``medmtl: error: <file>: ...``,
through ``medmtl.cli.main``). Checkpoints are written atomically (``AtomicCheckpointIO``) unless the config
names its own checkpoint plugin. ``docs/distributed.md`` covers DDP and FSDP runs and exact resume.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentError
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from medmtl.data.datamodule import MultitaskDataModule
from medmtl.lightning.checkpoint_io import AtomicCheckpointIO, describe_error, unreadable_checkpoint
from medmtl.lightning.module import MultitaskModule

COMMANDS = ("fit", "validate", "test", "predict")
EXIT_USER_ERROR = 2
_MAX_MESSAGE = 400


def one_line(err: BaseException) -> str:
    """An exception's message squeezed onto one line (jsonargparse's span several), cut at a readable length."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


class ConfigurationError(Exception):
    """The configuration parsed but its classes could not be built from it."""


class FitConfigSaver(SaveConfigCallback):
    """Saves ``config.yaml`` for ``fit`` only, overwriting a previous one (a config's run folder is fixed, so
    rerunning it must not abort), and leaves it alone for the evaluation commands run in the same folder."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


class MultitaskCLI(LightningCLI):
    """LightningCLI with medmtl's classes and errors raised instead of exiting.

    ``validate``, ``test`` and ``predict`` run without the config's logger: with a run folder fixed by the
    config, a logger would replace the training run's log (metrics.csv). Their numbers go to metrics.json.
    """

    def __init__(self, args: Sequence[str]):
        super().__init__(
            MultitaskModule,
            MultitaskDataModule,
            save_config_callback=FitConfigSaver,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={
                "prog": "medmtl",
                "exit_on_error": False,
                **{c: {"exit_on_error": False} for c in COMMANDS},
            },
            # The module takes its optimiser and scheduler as arguments: one place to configure them.
            auto_configure_optimizers=False,
            args=list(args),
        )

    def instantiate_classes(self) -> None:
        trainer = self.config[self.subcommand]["trainer"]
        if self.subcommand != "fit":
            trainer["logger"] = False
        for key, neutral in (("gradient_clip_val", None), ("accumulate_grad_batches", 1)):
            # Lightning rejects these under manual optimisation, but only once fit starts.
            if trainer.get(key, neutral) != neutral:
                raise ConfigurationError(
                    f"trainer.{key}: MultitaskModule optimises manually, so set model.{key} instead"
                )
        # jsonargparse re-raises what a constructor rejects (medmtl's ConfigError included) as a ValueError or
        # TypeError naming the key; at this point every such error comes from the configuration.
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, ImportError) as err:
            raise ConfigurationError(one_line(err)) from err

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads the hyper-parameters of a --ckpt_path file before it builds anything, with a plain
        # torch.load: a damaged file fails here first (``--ckpt_path last`` fails later, in AtomicCheckpointIO).
        try:
            super()._parse_ckpt_path()
            self._default_unrecorded_network_args()
        except ArgumentError:
            raise
        except Exception as err:
            path = self.config[self.config.subcommand].get("ckpt_path")
            raise unreadable_checkpoint(path, describe_error(err)) from err

    def _default_unrecorded_network_args(self) -> None:
        """Network arguments a --ckpt_path file does not record take their defaults in code.

        LightningCLI lays the checkpoint's hyper-parameters over the config, so an argument added to the
        network after the checkpoint was written would take the config's value: a lesion checkpoint trained
        with array positions would be evaluated as if it read patient positions (``configs/lesion_mni.yaml``
        sets ``refine_position: patient``). New arguments default to the behaviour from before they existed,
        which is what such a checkpoint was trained with.
        """
        command = self.config.get("subcommand")
        path = self.config[command].get("ckpt_path") if command else None
        if not (path and Path(path).is_file()):
            return
        # Memory-mapped: only the hyper-parameters are read; Lightning has just loaded the whole file once.
        recorded = torch.load(path, weights_only=True, map_location="cpu", mmap=True).get(
            "hyper_parameters", {}
        )
        network = self.config[command].get("model.model")
        fill_unrecorded_args(network, recorded.get("model"))

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        # Only in place of Lightning's default, not of a plugin the config chose.
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer


def fill_unrecorded_args(network: Any, recorded: Any) -> list[str]:
    """Set in ``network`` (the parsed config's ``model.model``: class_path and init_args) the code defaults of
    the constructor arguments that ``recorded`` (a checkpoint's ``hyper_parameters["model"]``, the same
    shape) lacks, when both name the same class; returns the arguments set."""
    if network is None or not isinstance(recorded, Mapping) or "init_args" not in recorded:
        return []
    class_path = network.get("class_path")
    if class_path != recorded.get("class_path") or network.get("init_args") is None:
        return []
    module, _, name = class_path.rpartition(".")
    parameters = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    filled = []
    for arg, parameter in parameters.items():
        if arg not in recorded["init_args"] and parameter.default is not inspect.Parameter.empty:
            network.init_args[arg] = parameter.default
            filled.append(arg)
    return filled


def _quiet_seed_message() -> None:
    # "Seed set to N" would precede a configuration error's one line; the seed is in config.yaml anyway.
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)


def run(argv: Sequence[str]) -> int:
    """Run one command, e.g. ``run(["fit", "-c", "configs/demo_cpu.yaml"])``. Returns the exit code.

    ``MedmtlError`` propagates (``medmtl.cli.main`` prints it); argument and Lightning configuration errors
    are printed here as one line.
    """
    command = argv[0] if argv else "fit"
    _quiet_seed_message()
    try:
        with warnings.catch_warnings():
            # We pass argv explicitly although sys.argv also holds it; that is intended here.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            # ModelCheckpoint asks manually optimised modules for weights from before the step; the weights after
            # it are the ones that match the checkpoint's step count, which an exact resume needs.
            warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
            MultitaskCLI(argv)
    except (ArgumentError, ConfigurationError, MisconfigurationException) as err:
        print(f"medmtl {command}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0
