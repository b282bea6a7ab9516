"""One optimizer step of a model on its task's loss, and one evaluation pass (loss and the task's
metrics): the part of the training loop that the loop (:class:`~framework.trainer.Trainer`) and
the LR range test (:class:`~framework.lr_finder.LRFinder`) share."""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from framework import distributed, tasks
from framework.errors import ConfigError
from framework.trainer import host_memory
from framework.trainer.steps import loader_group_sizes, total_norm

#: How gradients are clipped (``trainer.gradient_clip_algorithm``; Lightning's names).
CLIP_ALGORITHMS = ("norm", "value")


def check_grad_args(gradient_clip_val: Optional[float] = None, gradient_clip_algorithm: str = "norm",
                    grad_norm_every_n_steps: int = 10) -> list[str]:
    """The one-line messages of the gradient keys (clipping, the norm's sampling) out of range
    (empty when all are fine); pure, so :func:`framework.config.validate` reports them before
    anything is built.

    Args:
        gradient_clip_val: (gradient units) the threshold, > 0, or None (no clipping).
        gradient_clip_algorithm: ``norm`` or ``value`` (:data:`CLIP_ALGORITHMS`).
        grad_norm_every_n_steps: (steps) an integer >= 0 (:class:`StepEngine`).
    """
    errors = []
    n = grad_norm_every_n_steps
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        errors.append(f"trainer.grad_norm_every_n_steps={n}: must be an integer >= 0 (1 = every step, 0 = only "
                      "when clipping by norm computes it)")
    if gradient_clip_val is not None and not (isinstance(gradient_clip_val, (int, float))
                                              and not isinstance(gradient_clip_val, bool) and gradient_clip_val > 0):
        errors.append(f"trainer.gradient_clip_val={gradient_clip_val}: must be > 0 or null (no clipping)")
    if gradient_clip_algorithm not in CLIP_ALGORITHMS:
        errors.append(f"trainer.gradient_clip_algorithm={gradient_clip_algorithm}: use norm (scale the gradients to "
                      "total L2 norm gradient_clip_val) or value (clamp each element to "
                      "[-gradient_clip_val, gradient_clip_val])")
    return errors


class StepEngine:
    """Forward, backward and optimizer step with gradient accumulation, mixed precision,
    clipping and data parallelism; the base of :class:`~framework.trainer.Trainer`, which adds
    the LR plan, the step index ``k`` and everything a run records.

    A step's gradient is that of the task's mean loss (:meth:`framework.tasks.Task.loss`; for
    classification the cross-entropy; with ``mixup`` on, the soft-target cross-entropy of the
    mixed batch, :meth:`micro_step`) over its accumulation group's samples:
    each micro-batch's loss is weighted by its share of them, so ``batch_size=8,
    accumulate_grad_batches=4`` gives the gradient of ``batch_size=32`` (up to batch-norm
    statistics). Drive it with :meth:`micro_batches`, :meth:`micro_step` and
    :meth:`optimizer_step`; set the LRs before a group's first micro-step.

    Args:
        model: network mapping ``(B, C, H, W)`` to outputs ``(B, num_classes)``.
        optimizer: optimizer over the model's parameter groups.
        data: ``(train_loader, val_loader)``.
        device: where to train.
        accumulate_grad_batches: batches per optimizer step, >= 1.
        gradient_clip_val: the clipping threshold (gradient units): the max total gradient L2
            norm (``norm``) or the max absolute value of any gradient element (``value``);
            None = no clipping.
        precision: ``32``, ``bf16`` (autocast) or ``fp16`` (autocast + grad scaler, CUDA only).
        channels_last: model and input batches in ``torch.channels_last`` memory format.
        compile: run the forward passes through ``torch.compile``.
        cudnn_benchmark: ``torch.backends.cudnn.benchmark = True`` on CUDA.
        sync_batchnorm: in a data-parallel run, ``torch.nn.SyncBatchNorm`` (CUDA only).
        task: the loss and the metrics (:mod:`framework.tasks`); None =
            :func:`~framework.tasks.default_task` (classification over the model's outputs).
        gradient_clip_algorithm: ``norm`` (``torch.nn.utils.clip_grad_norm_``: all gradients
            scaled by ``gradient_clip_val / total norm`` when the total norm exceeds it) or
            ``value`` (``torch.nn.utils.clip_grad_value_``: each element clamped to
            ``[-gradient_clip_val, gradient_clip_val]``); Lightning's names.
        mixup: the batch mixer :meth:`micro_step` applies while its ``mixup_enabled`` is true, a
            ``timm.data.Mixup`` (``(x (B, C, H, W), y (B,)) -> (mixed x, soft targets (B, K))``,
            :func:`framework.trainer.mixing.build_mixup`); None = no mixing. The
            :class:`~framework.trainer.Trainer` builds it from its ``mixup_*`` keys.
        grad_norm_every_n_steps: (steps) measure the total gradient L2 norm of step ``k`` (logged
            as ``grad_norm``, checked by the divergence guard) when ``k`` is a multiple of it; 0 =
            never. Clipping by norm computes it anyway: then every step has it. Measuring reads
            every gradient once more: on the CPU about 2% of a resnet18 step on 32x32 images
            (``bench/loop_vs_plain.py``), hence not every step by default.
        malloc_trim_threshold_mb: (MiB) on the CPU, glibc's malloc keeps the memory a step frees
            for the next one while it is under this much, instead of handing it back to the system
            (:func:`~framework.trainer.host_memory.keep_freed_memory`; for the rest of the process);
            None = glibc's own thresholds, unless this process set them already.

    Raises:
        ConfigError: ``gradient_clip_val`` not > 0, ``gradient_clip_algorithm`` neither ``norm``
            nor ``value``, or ``grad_norm_every_n_steps`` not an integer >= 0 (:func:`check_grad_args`);
            ``malloc_trim_threshold_mb`` out of range (:func:`~framework.trainer.host_memory.check_malloc_args`).

    In a data-parallel run (:mod:`framework.distributed`) the model is wrapped in
    ``DistributedDataParallel``: gradients are averaged over the ranks after each optimizer
    step's last micro-batch (``no_sync`` before).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: tuple[DataLoader, DataLoader],
                 device: torch.device, accumulate_grad_batches: int = 1, gradient_clip_val: Optional[float] = None,
                 precision: str | int = "32", channels_last: bool = False, compile: bool = False,
                 cudnn_benchmark: bool = True, sync_batchnorm: bool = False, task: Optional[Any] = None,
                 gradient_clip_algorithm: str = "norm", mixup: Optional[Any] = None,
                 grad_norm_every_n_steps: int = 10,
                 malloc_trim_threshold_mb: Optional[int] = host_memory.DEFAULT_TRIM_THRESHOLD_MB):
        errors = check_grad_args(gradient_clip_val, gradient_clip_algorithm, grad_norm_every_n_steps)
        errors += host_memory.check_malloc_args(malloc_trim_threshold_mb)
        if errors:
            raise ConfigError(errors)
        self.channels_last = channels_last
        self.task = task if task is not None else tasks.default_task(model)
        self.metric_names = tasks.metric_names(self.task)  # the task's metrics, without prefix
        self._metrics: Optional[dict[str, Any]] = None  # the torchmetrics objects, on the device, from the first evaluation
        self.world_size, self.is_main = distributed.world_size(), distributed.is_main()
        if sync_batchnorm and self.world_size > 1:  # same Parameter objects: the optimizer keeps them
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
        self.model, self.optimizer = model, optimizer
        self._params = list(model.parameters())  # walked once: model.parameters() recurses every module
        self.ddp = None
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        # torch.compile wraps the forward; the plain module keeps the weights, so checkpoints stay the same
        train_module = self.ddp or model
        self.forward = torch.compile(train_module) if compile else train_module
        self.eval_forward = (torch.compile(model) if self.ddp else self.forward) if compile else model
        if cudnn_benchmark and device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if device.type == "cpu":
            host_memory.keep_freed_memory(malloc_trim_threshold_mb)
        self.train_loader, self.val_loader = data
        self.device = device
        self.accumulate = int(accumulate_grad_batches)
        self.clip = gradient_clip_val
        self.norm_every = grad_norm_every_n_steps
        self.clip_algorithm = gradient_clip_algorithm
        self.mixup = mixup
        self.precision = str(precision)
        self.scaler = torch.amp.GradScaler(device.type) if self.precision == "fp16" else None
        self.batches_per_epoch = len(self.train_loader) if self.train_loader is not None else 0

    def closes_group(self, i: int) -> bool:
        """Whether batch ``i`` (from 0) of an epoch is the last micro-batch of its optimizer step:
        every ``accumulate_grad_batches``-th batch, and the epoch's last (a partial group)."""
        return not (i + 1) % self.accumulate or i + 1 == self.batches_per_epoch

    def micro_batches(self, epoch: int, start: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, int, bool]]:
        """One pass over the train loader in epoch ``epoch``'s order, from batch ``start``.

        Yields:
            ``(i, x, y, group_samples, closes_group)``: batch index ``i`` in the epoch, images
            ``(B, C, H, W)`` and labels ``(B,)`` as the loader gives them, the samples of its
            accumulation group (the batch's share is ``B / group_samples``) and
            :meth:`closes_group` of ``i``.
        """
        loader = self.train_loader
        sizes = loader_group_sizes(loader, self.accumulate)
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch, start=start * loader.batch_size)
        g = start // self.accumulate
        for i, (x, y) in enumerate(loader, start=start):
            closes = self.closes_group(i)
            yield i, x, y, sizes[g], closes
            g += closes

    def micro_step(self, x: torch.Tensor, y: torch.Tensor, share: float, closes_group: bool) -> torch.Tensor:
        """One micro-batch: forward (autocast), the task's mean loss (float32 outputs) times
        ``share``, backward (through the grad scaler under fp16). In a data-parallel run the
        gradients are averaged over the ranks only when it ``closes_group`` (DDP's ``no_sync`` before).

        Mixing: while ``mixup`` is set and its ``mixup_enabled`` is true, a batch of even size
        ``B`` is mixed first (``mixup(x, y)``, in place on the device batch: in batch mode
        ``x' = lam x + (1 - lam) x.flip(0)``, soft targets ``t = lam s(y) + (1 - lam) s(y.flip(0))``
        with the task's label smoothing in ``s``) and the loss is the soft-target cross-entropy
        ``-sum_{b,c} t_bc log softmax(z_b)_c / B`` (nats): ``F.cross_entropy`` with probability
        targets, the formula of timm's ``SoftTargetCrossEntropy``, chosen as the same function the
        classification task uses for class indices. That is why mixing is only allowed for
        :class:`framework.tasks.Classification` and subclasses that keep its loss
        (:func:`framework.trainer.mixing.check_mixup_task`): any other task's loss would be
        bypassed. A batch of odd size (with an even
        ``batch_size`` only an epoch's last can be) is not mixed: it trains on the task's loss,
        which is the soft-target loss of its unmixed smoothed targets.

        Args:
            x: images ``(B, C, H, W)``; y: labels as the task's ``label_type`` says (``(B,)``
                class indices, ``(B, K)`` multi-hot or values), moved to the device here.
            share: ``B / samples of the accumulation group``.
            closes_group: the last micro-batch of its optimizer step (:meth:`closes_group`).

        Returns:
            The weighted loss (the task's units; nats for cross-entropy), a detached 0-dim tensor
            on the device (no sync).
        """
        sync = self.ddp.no_sync() if self.ddp is not None and not closes_group else contextlib.nullcontext()
        with sync:
            x, y = self._to_device(x), y.to(self.device, non_blocking=True)
            mixed = self.mixup is not None and self.mixup.mixup_enabled and len(x) % 2 == 0
            if mixed:
                x, y = self.mixup(x, y)  # y: soft targets (B, K), float32
            with self._autocast():
                outputs = self.forward(x).float()
                loss = F.cross_entropy(outputs, y) if mixed else self.task.loss(outputs, y)
            loss = loss * share
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        return loss.detach()

    def optimizer_step(self, step: Optional[int] = None) -> tuple[bool, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Clip, step, zero the gradients (the LRs are those set before the group's micro-steps).

        Clipping (``gradient_clip_val`` set): ``norm`` scales every gradient by
        ``clip / total norm`` when the total L2 norm exceeds ``clip``
        (``torch.nn.utils.clip_grad_norm_``); ``value`` clamps every element to
        ``[-clip, clip]`` (``torch.nn.utils.clip_grad_value_``). Under fp16 the gradients are
        unscaled first.

        Args:
            step: the step's index ``k``: its gradient norm is measured when ``k`` is a multiple
                of ``grad_norm_every_n_steps`` (every step with clipping by norm); None = not
                measured (unless clipping by norm).

        Returns:
            ``(applied, grad_norm, clipped)``: False when the fp16 grad scaler skipped the step
            (overflow; ``k`` must not advance); the total gradient L2 norm before clipping, None
            when not measured; and
            whether this step was clipped (``norm``: total norm > ``clip``; ``value``: some
            ``|grad| > clip``), a bool; the two as 0-dim tensors on the device (read later, no
            sync here); ``clipped`` is None without clipping.
        """
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clipped = norm = None
        measure = step is not None and self.norm_every > 0 and step % self.norm_every == 0
        if self.clip is None:
            if measure:
                norm = total_norm([p.grad for p in self._params if p.grad is not None])
        elif self.clip_algorithm == "norm":
            norm = torch.nn.utils.clip_grad_norm_(self._params, self.clip)
            clipped = norm > self.clip
        else:
            grads = [p.grad for p in self._params if p.grad is not None]
            norm = total_norm(grads) if measure else None
            clipped = total_norm(grads, math.inf) > self.clip  # the largest |element|, before clamping
            torch.nn.utils.clip_grad_value_(self._params, self.clip)
        applied = True
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            applied = self.scaler.get_scale() >= scale
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return applied, norm, clipped

    def train_mode(self) -> None:
        """Model in training mode; a schedule-free optimizer at the point it trains on (its
        ``train()``; other optimizers have no such method)."""
        self._optimizer_mode("train")
        self.model.train()

    def eval_mode(self) -> None:
        """Model in eval mode; a schedule-free optimizer at its averaged weights (its ``eval()``)."""
        self._optimizer_mode("eval")
        self.model.eval()

    def _optimizer_mode(self, mode: str) -> None:
        switch = getattr(self.optimizer, mode, None)
        if callable(switch):
            switch()

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        """A batch ``(B, C, H, W)`` on the device (non-blocking from pinned memory), channels-last
        when asked."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def _autocast(self):
        if self.precision == "32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _metric_objects(self) -> dict[str, Any]:
        """The task's metrics (``torchmetrics.Metric`` by name) on the device, made once, reset."""
        if self._metrics is None:
            made = self.task.metrics()
            if list(made) != self.metric_names:
                raise ValueError(f"{type(self.task).__name__}.metrics() gives {list(made)}, metric_names() "
                                 f"{self.metric_names}: make them agree")
            self._metrics = {name: metric.to(self.device) for name, metric in made.items()}
        for metric in self._metrics.values():
            metric.reset()
        return self._metrics

    @torch.no_grad()
    def outputs(self, loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's outputs for every sample of ``loader``, in its order, in eval mode, with
        the loader's labels.

        Args:
            loader: batches ``(x (B, C, H, W), labels)``.

        Returns:
            ``(outputs (N, K) float32, labels (N,) or (N, K))``, both on the CPU.
        """
        self.eval_mode()
        chunks, labels = [], []
        for x, y in loader:
            with self._autocast():
                chunks.append(self.eval_forward(self._to_device(x)).float())
            labels.append(torch.as_tensor(y))
        self.model.train()
        return torch.cat(chunks).cpu(), torch.cat(labels).cpu()

    @torch.no_grad()
    def evaluate(self, loader: Optional[Any] = None, prefix: str = "val/",
                 module: Optional[torch.nn.Module] = None) -> dict[str, float]:
        """The task's loss and metrics over a loader (the validation set by default).

        Runs the model in eval mode (autocast as in training; outputs ``(B, K)`` as float32);
        a schedule-free optimizer is switched to its averaged weights first (and stays there until
        the next epoch's :meth:`train_mode`, so the epoch's checkpoint holds them). The loss is
        the mean over the samples, ``sum_b loss_b x B_b / N`` (each batch's mean times its size),
        summed on the device; each metric is a ``torchmetrics.Metric`` of the task
        (:meth:`~framework.tasks.Task.metrics`), updated on the device with
        :meth:`~framework.tasks.Task.metric_inputs` of every batch. In a data-parallel run each rank
        evaluates its shard of the loader: the loss sums are added over the ranks and torchmetrics
        syncs the metrics' states over the ranks in ``compute()`` (a collective every rank makes).

        Args:
            loader: batches ``(x (B, C, H, W), labels)``; None = the validation loader.
            prefix: the keys' prefix, ``val/`` or ``test/`` (``val_ema/`` for the EMA weights).
            module: other weights of the same network to evaluate, run as they are (the EMA copy,
                kept in eval mode; its buffers are rank 0's); None = the model.

        Returns:
            ``{prefix + "loss": mean loss, prefix + name: value}`` for each of the task's metrics
            (e.g. ``val/loss`` in nats and ``val/acc``, ``val/acc_top5`` as fractions).
        """
        loader = self.val_loader if loader is None else loader
        if module is None:
            self.eval_mode()
        forward = self.eval_forward if module is None else module
        distributed.broadcast_buffers(self.model if module is None else module)  # rank 0's batch-norm statistics
        metrics = self._metric_objects()
        inputs = getattr(self.task, "metric_inputs", None)
        loss_sum = torch.zeros((), device=self.device)
        n = 0
        for x, y in loader:
            x, y = self._to_device(x), y.to(self.device, non_blocking=True)
            with self._autocast():
                outputs = forward(x)
            outputs = outputs.float()
            loss_sum += self.task.loss(outputs, y) * len(y)
            if metrics:
                preds, target = inputs(outputs, y) if inputs is not None else (outputs, y)
                for metric in metrics.values():
                    metric.update(preds, target)
            n += len(y)
        self.model.train()
        computed = [metric.compute().reshape(()) for metric in metrics.values()]  # synced over the ranks
        values = [v.double() for v in computed]
        totals = torch.stack((loss_sum.double(), torch.tensor(n, dtype=torch.float64, device=self.device)))
        if self.world_size > 1:  # each rank saw its shard: sum the sums
            distributed.all_reduce_sum(totals)
        loss, n, *numbers = torch.cat((totals, torch.stack(values))).tolist() if values else totals.tolist()
        numbers = [_shortest(v) if c.dtype == torch.float32 else v for v, c in zip(numbers, computed)]
        return {f"{prefix}loss": loss / n, **{f"{prefix}{name}": v for name, v in zip(metrics, numbers)}}


def _shortest(value: float) -> float:
    """A float32 metric value as the shortest decimal that is the same float32 (``0.1``, not
    ``0.10000000149011612``), so the CSVs and ``summary.json`` show what was computed."""
    import numpy as np

    return float(str(np.float32(value)))
