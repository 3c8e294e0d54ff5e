"""``ModelCheckpoint``: Lightning's, with ``last.ckpt`` holding the latest weights again.

Lightning 2.6 writes ``last.ckpt`` at the end of a validation only when the same validation also wrote a
top-k checkpoint. With a monitored metric and ``save_top_k: 1`` (every medmtl config), ``last.ckpt`` is then
the best checkpoint, not the latest: a run killed after its metric stopped improving resumes with
``--ckpt_path last`` from that earlier step and redoes the steps since, and "the last step" of a finished run
is whichever step validated best. This subclass also writes ``last.ckpt`` after every other validation, so
``last`` means the latest weights and ``best`` the best ones.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint


class ModelCheckpoint(LightningModelCheckpoint):
    """``lightning.pytorch.callbacks.ModelCheckpoint`` whose ``save_last=True`` saves after every validation
    (see the module docstring); every argument is Lightning's."""

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if (
            self.save_last is True
            and not self._should_skip_saving_checkpoint(trainer)
            and not self._should_save_on_train_epoch_end(trainer)
            and self._last_global_step_saved != trainer.global_step
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
