"""A tiny but real training program: the example nero runs (numpy only).

An MLP with `--layers` tanh hidden layers learns a two-spirals-like toy task by full-batch
gradient descent on the squared error. Each epoch prints one line nero reads as metrics:

    epoch=3 loss=0.41 val_loss=0.52 acc=0.88

When tensorboardX or torch is installed it also writes a TensorBoard event file into the
run folder with the same three values (tags loss, val_loss, acc), which nero reads too: both
ways a program reports metrics, side by side. At a step both give, the file's exact value
wins over the printed, rounded one (and orchestrator.track's over both), so the results show
one value per step either way.

Too large a learning rate (try --lr 3.0) makes gradient descent overshoot: the loss grows
geometrically until the floats overflow to inf and become NaN (with --layers 0 it stays inf
for several epochs first). Like many real scripts, this one keeps going anyway and only
complains at the end (exit code 1), so a rule such as `isnan(loss) or isinf(loss)` in the
sheet saves the wasted time. A checkpoint is written every epoch;
with NERO_RESUME=1 (a retry) training continues from the previous attempt's checkpoint.
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

try:  # optional: richer metrics through nero's in-job API
    from orchestrator import track
except ImportError:
    track = None


def tensorboard_writer():
    """A TensorBoard SummaryWriter into the run folder, where nero finds its event file
    (a tag is the name of its metric: `train/loss` would be `train/loss`), if tensorboardX or
    torch is installed; else None: the printed lines alone carry the metrics."""
    folder = os.path.join(os.environ.get("NERO_RUN_DIR") or ".", "tb")
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch without the tensorboard package raises ImportError too
            return None
    return SummaryWriter(folder, flush_secs=1)


def make_data(seed: int = 0, n: int = 400):
    """Two noisy interleaved half-moons; labels are -1 / +1. Fixed seed: same data every run."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, n)
    y = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    x = np.stack([np.cos(t) - (y > 0), np.sin(t) * -y + 0.3 * (y > 0)], axis=1)
    x = x * 1.5 + rng.normal(0, 0.15, x.shape)
    split = n * 3 // 4
    return x[:split], y[:split], x[split:], y[split:]


def init_weights(layers: int, width: int = 16, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = [2] + [width] * layers + [1]
    return [rng.normal(0, 1 / np.sqrt(a), (a + 1, b)) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]


def forward(weights: list[np.ndarray], x: np.ndarray) -> list[np.ndarray]:
    """Activations of every layer (the input first); the output layer is linear."""
    acts = [x]
    for i, w in enumerate(weights):
        z = np.hstack([acts[-1], np.ones((len(x), 1))]) @ w
        acts.append(z if i == len(weights) - 1 else np.tanh(z))
    return acts


def step(weights: list[np.ndarray], x: np.ndarray, y: np.ndarray, lr: float) -> None:
    """One gradient-descent step on the mean squared error, in place."""
    acts = forward(weights, x)
    delta = 2 * (acts[-1][:, 0] - y)[:, None] / len(x)
    for i in reversed(range(len(weights))):
        grad = np.hstack([acts[i], np.ones((len(x), 1))]).T @ delta
        if i:
            delta = (delta @ weights[i][:-1].T) * (1 - acts[i] ** 2)
        weights[i] -= lr * grad


def evaluate(weights, x, y) -> tuple[float, float]:
    pred = forward(weights, x)[-1][:, 0]
    return float(np.mean((pred - y) ** 2)), float(np.mean(np.sign(pred) == y))


def checkpoint_dir() -> Path:
    return Path(os.environ.get("NERO_RUN_DIR") or ".")


def load_checkpoint(layers: int):
    """The previous attempt's checkpoint when nero retries with NERO_RESUME=1, else None."""
    if os.environ.get("NERO_RESUME") != "1":
        return None
    for folder in filter(None, [os.environ.get("NERO_PREV_RUN_DIR"), str(checkpoint_dir())]):
        path = Path(folder) / "checkpoint.npz"
        if path.is_file():
            data = np.load(path)
            weights = [data[f"w{i}"] for i in range(layers + 1)]
            return int(data["epoch"]), weights
    return None


def save_checkpoint(epoch: int, weights: list[np.ndarray]) -> None:
    """Written to a temporary file and renamed, so a killed job never leaves half a file."""
    path = checkpoint_dir() / "checkpoint.npz"
    tmp = path.with_name("checkpoint.tmp.npz")
    with open(tmp, "wb") as f:
        np.savez(f, epoch=epoch, **{f"w{i}": w for i, w in enumerate(weights)})
    os.replace(tmp, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lr", type=float, default=0.1, help="learning rate")
    p.add_argument("--layers", type=int, default=1, help="hidden layers (0 = linear model)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps-per-epoch", type=int, default=25)
    p.add_argument("--epoch-seconds", type=float, default=0.3, help="pace: minimum time per epoch")
    p.add_argument("--fail-at-epoch", type=int, default=0, help="exit with code 3 at this epoch (not when resuming)")
    args = p.parse_args()

    x, y, vx, vy = make_data()
    weights, first = init_weights(args.layers), 1
    resumed = load_checkpoint(args.layers)
    if resumed:
        done, weights = resumed
        first = done + 1
        print(f"resuming after epoch {done} from the previous attempt's checkpoint", file=sys.stderr)
    first_nan = None
    np.seterr(all="ignore")  # overflow is the lesson of lr=3.0, not a crash
    board = tensorboard_writer()
    for epoch in range(first, args.epochs + 1):
        started = time.monotonic()
        if epoch == args.fail_at_epoch and os.environ.get("NERO_RESUME") != "1":
            print(f"failing on purpose at epoch {epoch} (--fail-at-epoch)", file=sys.stderr)
            return 3
        for _ in range(args.steps_per_epoch):
            step(weights, x, y, args.lr)
        loss, _ = evaluate(weights, x, y)
        val_loss, acc = evaluate(weights, vx, vy)
        print(f"epoch={epoch} loss={loss:.4g} val_loss={val_loss:.4g} acc={acc:.3g}", flush=True)
        if track is not None:
            track.log(step=epoch, loss=loss, val_loss=val_loss, acc=acc)
        if board is not None:
            for tag, value in (("loss", loss), ("val_loss", val_loss), ("acc", acc)):
                board.add_scalar(tag, value, epoch)
        if np.isnan(loss) and first_nan is None:
            first_nan = epoch
        save_checkpoint(epoch, weights)
        time.sleep(max(0.0, args.epoch_seconds - (time.monotonic() - started)))
    if board is not None:
        board.close()
    if first_nan is not None:
        print(f"error: the loss became NaN at epoch {first_nan}: the learning rate {args.lr} "
              "is too large for this model; try a smaller --lr", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
