"""The default job (`python train.py`) written by hand in plain PyTorch, without the framework.

    python bench/plain_digits.py                       # writes into outputs/plain_digits/
    python bench/plain_digits.py --out /tmp/plain --epochs 3

Same work as ``python train.py``: scikit-learn's digits (stratified 80/20 split with
random_state 0, 8x8 -> 32x32 bilinear, normalised by the train split's mean/std, 1 channel),
timm ``resnet10t`` (10 classes, 1 input channel), SGD (Nesterov momentum 0.9, weight decay 5e-4 on
weights only: not on biases and norm parameters), cosine LR per optimizer step from lr0=0.01 to
lr0*lrf=1e-4 at the last step, batch 64, 10 epochs, seed 0, validation (batches of 128) after
every epoch, ``last.pt`` (model + optimizer) after every epoch and ``steps.csv`` (step, epoch,
lr, loss). The whole dataset sits on the device and batches are cut by index, as the
framework's ``loader=auto`` does for digits; the shuffle of epoch ``e`` is the framework's
(``randperm`` seeded with ``seed * 1_000_003 + e``), so both draw the same batches and the same
initial weights.

Left out on purpose (the framework's extras): best.pt, fsync + atomic rename of checkpoints,
RNG state and config in checkpoints, the per-step gradient norm and divergence check,
epochs.csv, summary.json, lr.png, git state, the results table, Hydra's run folder and log.
"""
import argparse
import csv
import math
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--out", default="outputs/plain_digits")
p.add_argument("--epochs", type=int, default=10)
p.add_argument("--batch-size", type=int, default=64)
p.add_argument("--lr0", type=float, default=0.01)
p.add_argument("--lrf", type=float, default=0.01)
p.add_argument("--seed", type=int, default=0)
args = p.parse_args()
t_start = time.perf_counter()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.manual_seed(args.seed)

# data: 1,797 images 8x8 in 0..16 -> (N, 1, 32, 32), normalised with the train split's statistics
digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
y = torch.tensor(digits.target, dtype=torch.int64)
i_train, i_val = train_test_split(np.arange(len(y)), test_size=0.2, stratify=digits.target, random_state=0)
x_train = F.interpolate(x[i_train], size=32, mode="bilinear", align_corners=False)
x_val = F.interpolate(x[i_val], size=32, mode="bilinear", align_corners=False)
mean, std = x_train.mean(), x_train.std()
x_train, x_val = ((x_train - mean) / std).to(device), ((x_val - mean) / std).to(device)
y_train, y_val = y[i_train].to(device), y[i_val].to(device)

model = timm.create_model("resnet10t", num_classes=10, in_chans=1).to(device)
decay = [q for n, q in model.named_parameters() if q.ndim > 1 and not n.endswith(".bias")]
no_decay = [q for n, q in model.named_parameters() if q.ndim <= 1 or n.endswith(".bias")]
opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                      lr=args.lr0, momentum=0.9, nesterov=True)

n, bs = len(y_train), args.batch_size
steps_per_epoch = math.ceil(n / bs)  # 1,437 samples: 22 x 64 + 29 (the last batch is kept)
T = args.epochs * steps_per_epoch


def lr_at(k):  # cosine from lr0 (k = 0) to lr0 * lrf (k = T - 1)
    return args.lr0 * (args.lrf + (1 - args.lrf) * (1 + math.cos(math.pi * (k / (T - 1)))) / 2)


@torch.no_grad()
def evaluate():
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(y_val), 2 * bs):
        logits = model(x_val[i : i + 2 * bs])
        loss += F.cross_entropy(logits, y_val[i : i + 2 * bs], reduction="sum").item()
        correct += (logits.argmax(1) == y_val[i : i + 2 * bs]).sum().item()
    model.train()
    return loss / len(y_val), correct / len(y_val)


log = open(out / "steps.csv", "w", newline="")
steps = csv.writer(log)
steps.writerow(["step", "epoch", "lr", "loss"])
k = 0
model.train()
for epoch in range(args.epochs):
    t0 = time.perf_counter()
    order = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed * 1_000_003 + epoch)).to(device)
    train_loss = 0.0
    for i in range(steps_per_epoch):
        idx = order[i * bs : (i + 1) * bs]
        lr = lr_at(k)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = loss.item()
        train_loss += loss * len(idx)
        steps.writerow([k, epoch, lr, loss])
        k += 1
    log.flush()
    val_loss, val_acc = evaluate()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "step": k},
               out / "last.pt")
    print(f"epoch {epoch + 1}/{args.epochs}  train/loss {train_loss / n:.4f}  val/loss {val_loss:.4f}  "
          f"val/acc {val_acc:.4f}  lr {lr:.4g}  {time.perf_counter() - t0:.2f} s", flush=True)
log.close()
print(f"final val/acc {val_acc:.4f}  ({k} steps, {time.perf_counter() - t_start:.1f} s after imports)")
