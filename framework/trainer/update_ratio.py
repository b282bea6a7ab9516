"""The update-to-weight ratio ``‖Δw‖/‖w‖`` of each parameter group, measured on sampled steps."""
from __future__ import annotations

from typing import Optional

import torch

from framework.doctor.signals import column
from framework.trainer.steps import total_norm


class UpdateRatios:
    """Per parameter group, the relative size of one optimizer step: ``‖w_{k+1} - w_k‖ / ‖w_k‖``
    (L2 norms over all the group's trainable tensors together), on every ``every_n_steps``-th
    step ``k`` (``k % every_n_steps == 0``).

    The LR doctor (:mod:`framework.doctor`) judges lr0 by the first step's ratio at lr0 (a
    healthy band around 10^-1.25) and draws the others; it reads them from ``steps.csv``
    (``update_ratio`` for group 0, ``update_ratio/<group>`` for the others). A. Karpathy's
    "update:data ratio" (~1e-3 in training, "Building makemore Part 3", 2022) is the same figure.

    Cost: on a sampled step a copy of the weights before the step, then one subtraction and two
    norms after it (about five passes over the weights' memory, on the device, no host
    synchronisation); nothing on the other steps. Every 10th step costs about half a gradient
    norm per step on average.

    Args:
        optimizer: the run's optimizer (its ``param_groups``, in order).
        every_n_steps: (steps) sampling period; 0 = never measured.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, every_n_steps: int):
        self.optimizer, self.every = optimizer, int(every_n_steps)
        self._before: Optional[list[list[torch.Tensor]]] = None

    def _groups(self) -> list[list[torch.Tensor]]:
        return [[p.detach() for p in g["params"] if p.requires_grad] for g in self.optimizer.param_groups]

    def before_step(self, k: int) -> None:
        """Copy the weights when step ``k`` is sampled (call before ``optimizer.step()``)."""
        self._before = None
        if self.every > 0 and k % self.every == 0:
            self._before = [[p.clone() for p in group] for group in self._groups()]

    def after_step(self) -> Optional[torch.Tensor]:
        """The sampled step's ratios, shape ``(G,)`` on the device (NaN for a group without a
        trainable tensor or with all-zero weights), or None when the step was not sampled."""
        if self._before is None:
            return None
        ratios = []
        device = next((t.device for group in self._before for t in group), torch.device("cpu"))
        for now, before in zip(self._groups(), self._before):
            if not now:
                ratios.append(torch.full((), float("nan"), device=device))
                continue
            delta = torch._foreach_sub(now, before)
            weight = total_norm(before)
            ratios.append(total_norm(delta) / torch.where(weight > 0, weight, torch.full_like(weight, float("nan"))))
        self._before = None
        return torch.stack(ratios).float()


def ratio_columns(group_names: list[str]) -> list[str]:
    """``steps.csv``'s ratio columns: ``update_ratio`` (group 0), ``update_ratio/<group>`` (the
    others), as the ``lr`` columns are named."""
    return [column("update_ratio", i, n) for i, n in enumerate(group_names)]
