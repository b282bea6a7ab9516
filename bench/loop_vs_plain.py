"""Throughput of the framework's trainer against a minimal hand-written PyTorch loop, in one process.

    python bench/loop_vs_plain.py                  # the three rows, 60 timed steps each, 3 pairs
    python bench/loop_vs_plain.py --steps 100 --repeats 5 --rows resnet18
    python bench/loop_vs_plain.py --loggers tensorboard mlflow wandb   # the framework's runs logging to every tracker

For each row the same model (fresh, same seed), data, batch size and number of optimizer steps
run through (a) ``framework.build.build(...).trainer.fit()`` (LR plan, logging, divergence guard, the
device-resident loader) and (b) a plain loop (``DataLoader``-free index batches, forward,
cross-entropy, backward, ``SGD.step`` with the same Nesterov momentum and weight decay as
``conf/optimizer/sgd.yaml``). Samples per second exclude the framework's end-of-epoch evaluation
(timed and subtracted); a 5-step warm-up run of each precedes the timed ones. Runs go in
back-to-back pairs (alternating which goes first); the ratio is the median of the pairs' ratios,
which a machine whose speed drifts between runs disturbs least; Python's garbage of the runs
before is collected (``gc.collect()``) before each timed run, so that no run pays for another's. Each row also times, on its
own, the tensor work the trainer adds: the total gradient norm (logged and checked by the
divergence guard on every ``trainer.grad_norm_every_n_steps``-th step), per measured step and as a
share of a plain step on average: a figure the drift does not blur; and the LR doctor's work (the
update ratios of a sampled step, one judgement of the run's rows) per step on average. On the CPU it
also prints the same pairs per second of the process's CPU time (``time.process_time``: all its
threads; the trackers' process and W&B's service process are not, so with ``--loggers`` it
shows the training process's own work), which time the VM loses to other machines on a shared
host does not enter. And the minor page faults per step of both loops: memory the C heap handed back to the
system and the next step touched again (``trainer.malloc_trim_threshold_mb``,
``framework.trainer.host_memory``; ``--malloc-trim-threshold-mb null`` for glibc's defaults). The
setting is process-wide: from the first framework run on, the plain loop's runs in the same process
have it too, so both loops run on the same allocator settings (the framework gets no advantage the
plain loop lacks).
Also prints the start-up
time of ``python train.py --cfg job``, import-to-first-step of a run, and peak memory.
"""
from __future__ import annotations

import argparse
import gc
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROWS = {  # name: overrides (dataset and model)
    "small_cnn_digits": ["dataset=digits", "model=resnet10t"],
    # synthetic images: as many as the timed steps take (at least 4096; framework_run sets dataset.train_size), so
    # they fall in one epoch, as in the plain loop (no evaluation between)
    "resnet18": ["dataset=synthetic", "model=resnet18", "dataset.img_size=32"],
    "vit_tiny": ["dataset=synthetic", "model=vit_tiny_patch16", "dataset.img_size=32"],
}


def framework_run(overrides: list[str], steps: int, batch: int, out: Path,
                  loggers: tuple[str, ...] = ()) -> tuple[float, object]:
    """Samples/s of the trainer over ``steps`` steps (evaluation time excluded) and the trainer.

    ``loggers``: trackers (``tensorboard``, ``mlflow``, ``wandb``) started as a run starts them,
    their store beside ``out``; the timed span then ends once the trackers have taken every
    queued row (their start and their closing, once per run, are timed apart and printed)."""
    from framework import tracking
    from framework.build import build
    from framework.config import validate
    from tests.helpers import compose_cfg

    args = (*overrides, f"batch_size={batch}", f"max_steps={steps}", "epochs=1000", "device=auto",
            "trainer.progress_bar=false", "trainer.save_checkpoints=false", "warmup_epochs=0",
            "trainer.log_every_n_steps=50", f"trainer.malloc_trim_threshold_mb={MALLOC_TRIM[0]}")
    if "dataset=synthetic" in overrides:  # one epoch holds every timed step: no evaluation between them
        args += (f"dataset.train_size={max(4096, steps * batch)}",)
    if loggers:
        args += (f"logger=[csv,{','.join(loggers)}]",)
    if "mlflow" in loggers:
        args += (f"logger.mlflow.tracking_uri=sqlite:///{out.parent}/mlflow.db",)
    if "wandb" in loggers:
        args += ("logger.wandb.mode=offline",)
    out.mkdir(parents=True, exist_ok=True)
    cfg = validate(compose_cfg(*args))
    trackers = tracking.Trackers(tracking.configured(cfg))
    tracking.check(trackers.trackers)
    t = time.perf_counter()
    trackers.prepare()  # as a run does: the trackers' process starts while the run is built
    built = build(cfg, out, trackers)
    trainer = built.trainer
    if trackers:  # from prepare() on: the build overlaps it
        tracking.start_trackers(cfg, built, {"overrides": list(args)}, out)
        TRACKER_S["start"].append(time.perf_counter() - t)
    spent = {"eval": 0.0, "eval_cpu": 0.0}
    evaluate = trainer.evaluate

    def timed_evaluate():
        t, c = time.perf_counter(), time.process_time()
        result = evaluate()
        spent["eval"] += time.perf_counter() - t
        spent["eval_cpu"] += time.process_time() - c
        return result

    trainer.evaluate = timed_evaluate
    sync(trainer.device)
    t0, c0, f0 = time.perf_counter(), time.process_time(), minor_faults()
    result = trainer.fit()
    sync(trainer.device)
    trackers.wait()
    speed = steps * batch / (time.perf_counter() - t0 - spent["eval"])
    CPU_SPEED["framework"].append(steps * batch / (time.process_time() - c0 - spent["eval_cpu"]))
    FAULTS["framework"].append((minor_faults() - f0) / steps)
    if trackers:
        t = time.perf_counter()
        trackers.finish({**result, "status": "completed"})
        TRACKER_S["finish"].append(time.perf_counter() - t)
    return speed, trainer


#: ``trainer.malloc_trim_threshold_mb`` of the framework's runs (``--malloc-trim-threshold-mb``).
MALLOC_TRIM: list[str] = ["1024"]
#: Seconds the trackers took to open and to close each run (``--loggers``), outside the timed span.
TRACKER_S: dict[str, list[float]] = {"start": [], "finish": []}
#: Samples per second of the process's CPU time (all its threads; time the VM's CPUs were taken
#: by other machines is not in it), of each timed run: a figure a loaded host disturbs less.
CPU_SPEED: dict[str, list[float]] = {"framework": [], "plain": []}
#: Minor page faults of the process per optimizer step, of each timed run (the evaluation's included):
#: memory handed back to the system by malloc and touched again (framework.trainer.host_memory).
FAULTS: dict[str, list[float]] = {"framework": [], "plain": []}


def minor_faults() -> int:
    """Minor page faults of this process so far (``getrusage``: all its threads)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def plain_run(trainer, steps: int, batch: int) -> float:
    """Samples/s of a minimal loop on a fresh copy of the trainer's model and data."""
    import copy

    import torch
    import torch.nn.functional as F

    device = trainer.device
    model = copy.deepcopy(trainer.model).train()
    # the optimizer arithmetic of conf/optimizer/sgd.yaml (Nesterov momentum 0.9, weight decay 5e-4), one group
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loader = trainer.train_loader
    x_all, y_all = loader.x, loader.y  # the device-resident tensors (same data)
    n = len(y_all)
    sync(device)
    t0, c0, f0 = time.perf_counter(), time.process_time(), minor_faults()
    done = 0
    while done < steps:
        order = torch.randperm(n, device=device)
        for i in range(0, n - batch + 1, batch):
            idx = order[i : i + batch]
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    sync(device)
    CPU_SPEED["plain"].append(steps * batch / (time.process_time() - c0))
    FAULTS["plain"].append((minor_faults() - f0) / steps)
    return steps * batch / (time.perf_counter() - t0)


def grad_norm_ms(trainer, repeats: int = 30) -> float:
    """Milliseconds of the total gradient norm on one measured step (on the gradients of one real
    batch), work a plain loop does not do."""
    import torch.nn.functional as F

    from framework.trainer.steps import total_norm

    x, y = next(iter(trainer.train_loader))
    F.cross_entropy(trainer.model(x), y).backward()
    grads = [p.grad for p in trainer._params if p.grad is not None]
    for _ in range(3):
        total_norm(grads)
    sync(trainer.device)
    t = time.perf_counter()
    for _ in range(repeats):
        total_norm(grads)
    sync(trainer.device)
    trainer.model.zero_grad(set_to_none=True)
    return (time.perf_counter() - t) / repeats * 1e3


def doctor_ms(trainer, repeats: int = 30) -> tuple[float, float]:
    """Milliseconds of the LR doctor's work on the trainer's weights: the update ratios of one
    sampled step (copy before the step, difference and two norms after it; the weights are left
    as they are, which costs the same), and its judgement of a whole run's rows (``diagnose`` on
    the rows the trainer wrote; the live doctor runs it once per interval, 20 times a run)."""
    from framework.doctor import diagnose, read_steps
    from framework.trainer.update_ratio import UpdateRatios

    ratios = UpdateRatios(trainer.optimizer, 1)
    for _ in range(3):
        ratios.before_step(0)
        ratios.after_step()
    sync(trainer.device)
    t = time.perf_counter()
    for _ in range(repeats):
        ratios.before_step(0)
        ratios.after_step()
    sync(trainer.device)
    sampled = (time.perf_counter() - t) / repeats * 1e3
    rows = read_steps(trainer.run_dir)
    t = time.perf_counter()
    diagnose(rows, len(rows))
    return sampled, (time.perf_counter() - t) * 1e3


def breakdown(overrides: list[str], steps: int, batch: int, out: Path,
              loggers: tuple[str, ...] = ()) -> dict[str, float]:
    """Milliseconds per optimizer step of each piece of one framework run, timed in place (one
    extra run, outside the pairs): the forward and backward passes (``micro_step``), the
    optimizer's ``step``, what a plain loop also does (``zero_grad``, cutting the batches), and
    the trainer's added work: the gradient norm as the loop computes it (right after the backward
    pass, its gradients no longer in the CPU's caches), the LR doctor's update ratios (a sampled
    step's copy, difference and norms, averaged over all steps) and recording the step (the row,
    the divergence check); ``other`` = the run's time per step minus the pieces (the loop's own
    Python). On the CPU the timers need no synchronisation; on a GPU they would time the launches,
    so the breakdown is printed for the CPU only."""
    import collections

    import framework.build as build_module
    from framework.trainer import engine

    spent: dict[str, float] = collections.defaultdict(float)

    def timed(owner, name, key):
        inner = getattr(owner, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t
        setattr(owner, name, wrapper)
        return inner

    def instrumented_build(*a, **k):
        built = original_build(*a, **k)
        tr = built.trainer
        for owner, name, key in ((tr, "micro_step", "forward+backward"), (tr.optimizer, "step", "optimizer.step"),
                                 (tr.optimizer, "zero_grad", "zero_grad"),
                                 (tr.update_ratios, "before_step", "update ratios"),
                                 (tr.update_ratios, "after_step", "update ratios"), (tr, "_record", "record step")):
            timed(owner, name, key)
        batches = tr.micro_batches

        def timed_batches(*a, **k):
            it = batches(*a, **k)
            while True:
                t = time.perf_counter()
                item = next(it, None)
                spent["batches"] += time.perf_counter() - t
                if item is None:
                    return
                yield item
        tr.micro_batches = timed_batches
        return built

    original_build, original_norm = build_module.build, engine.total_norm
    build_module.build = instrumented_build
    engine.total_norm = lambda *a, **k: _timed_call(spent, "grad norm", original_norm, *a, **k)
    try:
        speed, _ = framework_run(overrides, steps, batch, out, loggers)
    finally:
        build_module.build, engine.total_norm = original_build, original_norm
    per_step = {k: v / steps * 1e3 for k, v in spent.items()}
    per_step["other"] = batch / speed * 1e3 - sum(per_step.values())
    per_step["total"] = batch / speed * 1e3
    return per_step


def _timed_call(spent: dict[str, float], key: str, fn, *args, **kwargs):
    t = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        spent[key] += time.perf_counter() - t


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def startup() -> tuple[float, float]:
    """Seconds for ``python train.py --cfg job`` and for a 1-step run (import to exit)."""
    times = []
    for args in (["--cfg", "job"], ["dataset=synthetic", "model.name=test_resnet", "dataset.img_size=16",
                                    "max_steps=1", "trainer.progress_bar=false", "trainer.save_checkpoints=false",
                                    "hydra.run.dir=/tmp/loop_vs_plain_startup"]):
        t = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--loggers", nargs="*", default=[], choices=["tensorboard", "mlflow", "wandb"],
                        help="trackers the framework's runs log to (e.g. --loggers tensorboard mlflow wandb)")
    parser.add_argument("--malloc-trim-threshold-mb", default="1024",
                        help="trainer.malloc_trim_threshold_mb of the framework's runs (null: glibc's defaults; it "
                             "is process-wide, so the plain loop's runs after the first framework run share it)")
    args = parser.parse_args()
    MALLOC_TRIM[0] = args.malloc_trim_threshold_mb
    import tempfile

    import torch

    cfg_s, run_s = startup()
    print(f"start-up: `python train.py --cfg job` {cfg_s:.2f} s; a 1-step run (imports, build, 1 step, eval) {run_s:.2f} s")
    out = Path(tempfile.mkdtemp(prefix="loop_vs_plain_"))
    print(f"{'row':<18} {'framework samples/s':>20} {'plain samples/s':>16} {'ratio':>6}   (medians; ratio = median "
          "of the pairs' ratios)")
    for name in args.rows:
        fw, plain, ratios = [], [], []
        loggers = tuple(args.loggers)
        _, trainer = framework_run(ROWS[name], 5, args.batch, out / f"{name}_warm", loggers)  # warm-up (allocator, threads, the store)
        plain_run(trainer, 5, args.batch)
        for runs in (*CPU_SPEED.values(), *FAULTS.values()):
            runs.clear()
        for r in range(args.repeats):  # back-to-back pairs, alternating which goes first: drifts hit both
            if r % 2:
                gc.collect()  # the garbage of earlier runs is collected before a timed run, not in it
                plain.append(plain_run(trainer, args.steps, args.batch))
            gc.collect()
            speed, trainer = framework_run(ROWS[name], args.steps, args.batch, out / f"{name}_{r}", loggers)
            fw.append(speed)
            if not r % 2:
                gc.collect()
                plain.append(plain_run(trainer, args.steps, args.batch))
            ratios.append(fw[-1] / plain[-1])
        step_ms = args.batch / statistics.median(plain) * 1e3
        norm_ms = grad_norm_ms(trainer)
        norm_every = trainer.norm_every  # trainer.grad_norm_every_n_steps (these rows do not clip)
        norm_share = (norm_ms / norm_every if norm_every else 0.0) / step_ms
        every = trainer.update_ratios.every
        sampled_ms, judge_ms = doctor_ms(trainer)
        steps = max(len(trainer.history["step"]), 1)
        per_step = (sampled_ms / every if every else 0.0) + judge_ms * 20 / steps  # 20 judgements per run
        print(f"{name:<18} {statistics.median(fw):>20.1f} {statistics.median(plain):>16.1f} "
              f"{statistics.median(ratios):>6.3f}   (pairs: {', '.join(f'{v:.0f}/{p:.0f}' for v, p in zip(fw, plain))}; "
              f"ratio of the best runs {max(fw) / max(plain):.3f}; grad norm {norm_ms:.2f} ms of a "
              f"{step_ms:.1f} ms plain step (1 step in {norm_every}) = {norm_share:.2%} a step; LR doctor: update ratios {sampled_ms:.2f} ms "
              f"per sampled step (1 in {every}), judging {steps} rows {judge_ms:.1f} ms (20 a run): "
              f"{per_step:.2f} ms a step = {per_step / step_ms:.2%})")
        if trainer.device.type == "cpu":
            cpu_ratios = [f / p for f, p in zip(CPU_SPEED["framework"], CPU_SPEED["plain"])]
            print(f"{name:<18} per CPU-second of the process (samples / CPU s, medians): framework "
                  f"{statistics.median(CPU_SPEED['framework']):.1f}, plain {statistics.median(CPU_SPEED['plain']):.1f}, "
                  f"ratio {statistics.median(cpu_ratios):.3f} (pairs {min(cpu_ratios):.3f}-{max(cpu_ratios):.3f}); "
                  f"minor page faults per step (medians): framework {statistics.median(FAULTS['framework']):.0f}, "
                  f"plain {statistics.median(FAULTS['plain']):.0f}")
            parts = breakdown(ROWS[name], args.steps, args.batch, out / f"{name}_breakdown", loggers)
            total = parts.pop("total")
            print(f"{name:<18} one run timed in place, ms per step of {total:.1f}: " + ", ".join(
                f"{k} {v:.2f} ({v / total:.1%})" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])))
    if args.loggers:
        print(f"trackers {' '.join(args.loggers)}: the build and opening a run (which overlap) "
              f"{statistics.median(TRACKER_S['start']):.2f} s, "
              f"closing it {statistics.median(TRACKER_S['finish']):.2f} s (medians, once per run, not in samples/s)")
    device = trainer.device
    if device.type == "cuda":
        print(f"peak memory: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB on {device}")
    print(f"peak memory (process RSS): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB; device {device}")


if __name__ == "__main__":
    main()
