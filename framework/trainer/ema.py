"""Model EMA: an exponential moving average of the weights, updated after every applied optimizer
step (timm's ``ModelEmaV3``), evaluated beside the raw weights; and which of the two an epoch's
monitored value (the best epoch, ``best.pt``, the objective) comes from."""
from __future__ import annotations

from typing import Any, Optional

import torch

from framework import distributed, tasks
from framework.errors import ConfigError

#: Prefix of the EMA weights' validation metrics in ``epochs.csv`` (``val_ema/loss``, ``val_ema/acc``).
EMA_PREFIX = "val_ema/"


def check_ema_args(ema_decay: Optional[float] = None, ema_warmup: bool = False) -> list[str]:
    """The one-line messages of the EMA keys out of range (empty when both are fine); pure, so
    :func:`framework.config.validate` reports them before anything is built.

    Args:
        ema_decay: ``trainer.ema_decay``, the decay per step in (0, 1), or None (no EMA).
        ema_warmup: ``trainer.ema_warmup``, true or false.
    """
    errors = []
    if ema_decay is not None and (isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float))
                                  or not 0 < ema_decay < 1):
        errors.append(f"trainer.ema_decay={ema_decay}: must be in (0, 1), e.g. 0.9998, or null (no EMA)")
    if not isinstance(ema_warmup, bool):
        errors.append(f"trainer.ema_warmup={ema_warmup}: use true (the decay rises from 0) or false")
    return errors


class WeightEma:
    """An EMA copy of a model's weights and buffers (timm's ``ModelEmaV3``, in eval mode).

    After applied optimizer step number ``n`` (1-based: ``n = k + 1``) every floating-point
    tensor of the state dict moves as ``ema = d_n * ema + (1 - d_n) * w``, with timm's
    ``get_decay(n)``: ``d_1 = 0`` (the first update copies the weights), then ``d_n = decay``;
    with ``warmup``, ``d_n = min(decay, 1 - n^(-2/3))`` (``warmup_gamma=1``, ``warmup_power=2/3``;
    also 0 at ``n = 1``). Integer buffers (batch-norm ``num_batches_tracked``) are copied. A step
    the fp16 grad scaler skipped is no update (``n`` counts applied steps, as ``k`` does).

    Formula: ema_n = d_n * ema_(n-1) + (1 - d_n) * w_n, w_n = the weights after applied step n

    Source: timm ``timm/utils/model_ema.py`` (``ModelEmaV3``) and ``train.py``
    (``model_ema.update(model, step=num_updates)``).

    In a data-parallel run the parameters are the same on every rank (DDP), hence their EMA;
    batch-norm statistics are each rank's own during training, so :meth:`sync` copies rank 0's
    EMA buffers to every rank before each evaluation and checkpoint (as for the model's own
    buffers), and every rank holds the same EMA there.

    Args:
        model: the plain module (not the DDP or compiled wrapper), on its device.
        decay: ``trainer.ema_decay``, the decay per step in (0, 1), e.g. 0.9998.
        warmup: ``trainer.ema_warmup``, timm's ``use_warmup`` (the decay rises from 0).

    Raises:
        ConfigError: ``decay`` not in (0, 1) (set e.g. 0.9998, or null for no EMA), or ``warmup``
            not a bool (:func:`check_ema_args`).
    """

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = False):
        errors = check_ema_args(decay, warmup)
        if errors:
            raise ConfigError(errors)
        from timm.utils import ModelEmaV3

        self.ema = ModelEmaV3(model, decay=float(decay), use_warmup=bool(warmup))
        self.module = self.ema.module

    def update(self, model: torch.nn.Module, n: int) -> None:
        """Move the EMA toward ``model``'s weights after applied optimizer step number ``n`` (1-based)."""
        self.ema.update(model, step=n)

    def decay_at(self, n: int) -> float:
        """The decay ``d_n`` of update number ``n`` (timm's ``get_decay``)."""
        return self.ema.get_decay(n)

    def sync(self) -> None:
        """Copy rank 0's EMA buffers to every rank (a collective; nothing in a single process)."""
        distributed.broadcast_buffers(self.module)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA weights, keyed as the model's state dict (a collective: :meth:`sync`)."""
        self.sync()
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.module.load_state_dict(state)

    def set(self, model: torch.nn.Module) -> None:
        """Restart the EMA at ``model``'s weights (a resume of a run that had no EMA)."""
        self.ema.set(model)


def ema_key(monitor: str) -> Optional[str]:
    """The EMA counterpart of a monitored metric: ``val/acc`` -> ``val_ema/acc``; None for
    ``train/loss`` (the EMA weights are only validated)."""
    return EMA_PREFIX + monitor[len("val/"):] if monitor.startswith("val/") else None


def monitored(metrics: dict[str, Any], monitor: str, mode: str) -> tuple[Optional[float], str]:
    """An epoch's monitored value and the weights it comes from: the better under ``mode`` of
    ``val/<m>`` (raw weights) and ``val_ema/<m>`` (EMA weights, when the epoch has it); a tie
    goes to the raw weights.

    Returns:
        ``(value, "raw" | "ema")``; value None when the epoch has neither (not validated).
    """
    raw = metrics.get(monitor)
    key = ema_key(monitor)
    ema = metrics.get(key) if key is not None else None
    if ema is not None and tasks.is_better(ema, raw, mode):
        return ema, "ema"
    return raw, "raw"


def best_value(best: dict[str, Any], monitor: str) -> Optional[float]:
    """The monitored value of a best-epoch dict (``RunState.best``), from the weights it names in
    ``best_weights`` (``val_ema/<m>`` for ``ema``, else ``monitor``); None when there is none."""
    key = ema_key(monitor) if best.get("best_weights") == "ema" else monitor
    return best.get(key) if key is not None else None
