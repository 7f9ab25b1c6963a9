"""Training curves from ``trainer.state.log_history``: train and eval MLM loss against the optimizer step."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def loss_series(log_history: list[dict[str, Any]]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """``(train, eval)`` lists of ``(step, loss)`` from the Trainer's log history (one entry per logging event)."""
    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry and "step" in entry]
    evaluation = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    return train, evaluation


def plot_loss_curves(log_history: list[dict[str, Any]], path: str | Path, title: str = "MLM loss") -> Path | None:
    """Write a PNG of train and eval loss vs step to ``path``; returns it, or None when nothing was logged."""
    train, evaluation = loss_series(log_history)
    if not train and not evaluation:
        logger.warning("no losses in the log history: no loss curve written")
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue", linewidth=1.2)
    if evaluation:
        ax.plot(*zip(*evaluation), label="eval loss", color="tab:orange", marker="o", linewidth=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("masked-token cross-entropy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
