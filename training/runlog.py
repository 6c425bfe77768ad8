"""Rank 0's record of a run: ``metrics.jsonl``, TensorBoard events (``tb/``)
and ``curves.png``. Other ranks get a :class:`RunLog` that writes nothing.

On resume the history stored in the checkpoint is authoritative: the JSONL is
rewritten from it, so epochs of a killed run that never reached a checkpoint
do not linger.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from models.fsio import write_atomic

__all__ = ["RunLog"]

log = logging.getLogger(__name__)


class RunLog:
    def __init__(self, run_dir: Path | None, *, history: list[dict[str, Any]] | None = None) -> None:
        self.run_dir = run_dir
        self.history: list[dict[str, Any]] = list(history or [])
        self._tb: Any = None
        if run_dir is None:
            return
        self._rewrite_jsonl(run_dir)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tb"), purge_step=len(self.history) + 1)
        except ImportError:  # tensorboard is in the train extra; runs still log JSONL without it
            log.warning("tensorboard is not installed: no tb/ events for %s", run_dir)

    def _rewrite_jsonl(self, run_dir: Path) -> None:
        path = run_dir / "metrics.jsonl"
        text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in self.history)
        write_atomic(path, text.encode("utf-8"))

    def epoch(self, row: dict[str, Any]) -> None:
        """Record one finished epoch (``row["epoch"]`` is 1-based)."""
        self.history.append(row)
        if self.run_dir is None:
            return
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "epoch":
                    self._tb.add_scalar(key, value, row["epoch"])
            self._tb.flush()
        self.plot()

    def plot(self) -> None:
        """``curves.png``: training loss and the validation metrics per epoch."""
        if self.run_dir is None or not self.history:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [r["epoch"] for r in self.history]
        metric_keys = [k for k in ("top1", "map50", "map") if k in self.history[-1]]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        ax1.plot(epochs, [r["train_loss"] for r in self.history], marker="o", label="train loss")
        if "val_loss" in self.history[-1]:
            ax1.plot(epochs, [r["val_loss"] for r in self.history], marker="o", label="val loss")
        ax1.set_xlabel("epoch")
        ax1.set_title("loss")
        ax1.legend()
        for key in metric_keys:
            ax2.plot(epochs, [r[key] for r in self.history], marker="o", label=key)
        ax2.set_xlabel("epoch")
        ax2.set_ylim(0, 1)
        ax2.set_title("validation")
        ax2.grid(alpha=0.3)
        ax2.legend()
        fig.tight_layout()
        tmp = self.run_dir / ".curves.tmp.png"
        fig.savefig(tmp, dpi=90)
        plt.close(fig)
        os.replace(tmp, self.run_dir / "curves.png")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
