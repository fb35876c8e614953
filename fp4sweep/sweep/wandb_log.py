"""Optional Weights & Biases logging (``logger=wandb``), done by the driver as trials finish.

wandb is imported only when asked for, so fp4sweep works without it. Runs are offline unless
the WANDB_MODE environment variable says otherwise; each trial is one run, its id the trial id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fp4sweep.sweep.config import SweepError


class WandbLogger:
    def __init__(self, options: dict[str, Any], results_dir: Path) -> None:
        try:
            import wandb
        except ImportError:
            raise SweepError("logger=wandb needs the wandb package: pip install 'fp4sweep[wandb]'") from None
        self._wandb = wandb
        self.project = options.get("project") or "fp4sweep"
        self.entity = options.get("entity")
        self.mode = os.environ.get("WANDB_MODE") or options.get("mode") or "offline"
        self.dir = Path(options.get("dir") or results_dir / "wandb")
        self.dir.mkdir(parents=True, exist_ok=True)

    def log(self, row: dict[str, Any], curve: list[dict[str, float]]) -> None:
        """One run per finished attempt: its spec as config, its curve, its row as summary."""
        run = self._wandb.init(
            project=self.project,
            entity=self.entity,
            id=row["trial_id"],
            name=row["recipe_label"],
            group=row["sweep"] or None,
            job_type=row["task"],
            config={"spec": row["spec"], **{k: v for k, v in row.items() if k.startswith("axis.")}},
            mode=self.mode,
            dir=str(self.dir),
            resume="allow",
            settings=self._wandb.Settings(silent=True),  # its messages would break the progress line
        )
        try:
            for point in curve:
                run.log({k: v for k, v in point.items() if k != "step"}, step=int(point["step"]))
            run.summary.update(
                {k: v for k, v in row.items() if k.split(".")[0] in ("metric", "overhead", "time", "status")}
            )
        finally:
            run.finish()


def make_logger(options: dict[str, Any], results_dir: Path) -> WandbLogger | None:
    """The logger that ``logger=`` names (None for ``logger=none``)."""
    backend = options.get("backend", "none")
    if backend == "none":
        return None
    if backend == "wandb":
        return WandbLogger(options, results_dir)
    raise SweepError(f"logger.backend: unknown backend {backend!r}; valid: ['none', 'wandb']")
