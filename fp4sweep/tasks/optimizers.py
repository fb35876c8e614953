"""The optimiser a recipe trains with: AdamW, or Stable-SPAM.

``build_optimizer`` is what every task calls, with the task's learning rate, weight decay and
betas; the recipe's ``optimizer`` field picks the algorithm (``Recipe.optimizer``, the
``optimizer`` axis).

Stable-SPAM (Huang et al., "Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit Adam",
arXiv 2502.17055, ICML 2025; reference code TianjinYellow/StableSPAM,
``galore_torch/stablespam.py``) is Adam on a cleaned gradient. Per parameter tensor, at step t:

    AdaClip   g_max = max|g|;  T_t = gamma3 T_{t-1} + (1 - gamma3) g_max;  T^ = T_t / (1 - gamma3^t)
              entries with |g| > T^ become g / g_max * T^ (the largest lands on T^)
    AdaGN     n = ||g||_2 (after AdaClip);  mu_t = gamma1 mu_{t-1} + (1 - gamma1) n;
              nu_t = gamma2 nu_{t-1} + (1 - gamma2) n^2;  mu^ = mu_t / (1 - gamma1^t),
              nu^ = nu_t / (1 - gamma2^t);  g <- g / n * mu^ / (sqrt(nu^) + eps)   (if n > 0)
    reset     every ``reset_interval`` steps (t a multiple of it) the Adam moments m and v are
              zeroed before this step's update and their bias correction starts again at 1
    Adam      decoupled weight decay p <- p (1 - lr wd), then Adam on g with bias correction
              over the steps k since the last reset.

Where the reference code departs from these equations, this follows the equations:

- the reference takes references to m and v before its reset, so the reset step still updates
  and uses the old moments (bias-corrected as step 1) and the zeros take effect one step later,
  counted as step 2;
- it bias-corrects T, mu and nu with the Adam step counter, so after a reset its clipping
  threshold is inflated (divided by 1 - 0.999^k for small k) until k grows again;
- it rescales ``p.grad`` in place; here the parameter's gradient is left as it was.

Not implemented: the reference's optional cosine decay of beta1 and gamma1 over ``total_T``
steps (off by default there, "may not be necessary for other tasks") and ``amsgrad`` (False
there).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from fp4sweep.quant.recipe import OPTIMIZERS


class StableSPAM(torch.optim.Optimizer):
    """Stable-SPAM (see the module docstring for the equations).

    Defaults are the reference's (``StableSPAM.__init__`` in TianjinYellow/StableSPAM):
    lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0 (decoupled, as AdamW),
    gamma1=0.7 and gamma2=0.9 (AdaGN: decay of the gradient norm's first and second moments),
    gamma3=0.999 (AdaClip: decay of the spike threshold), reset_interval=1000 (the reference's
    ``update_proj_gap``: steps between momentum resets; 0 never resets; its FP4 scripts use 500).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, gamma1: float = 0.7, gamma2: float = 0.9,
                 gamma3: float = 0.999, reset_interval: int = 1000) -> None:
        if not lr >= 0.0:
            raise ValueError(f"StableSPAM lr must be >= 0, got {lr}")
        if not eps >= 0.0:
            raise ValueError(f"StableSPAM eps must be >= 0, got {eps}")
        if not weight_decay >= 0.0:
            raise ValueError(f"StableSPAM weight_decay must be >= 0, got {weight_decay}")
        for name, value in (("betas[0]", betas[0]), ("betas[1]", betas[1]), ("gamma1", gamma1),
                            ("gamma2", gamma2), ("gamma3", gamma3)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"StableSPAM {name} must be in [0, 1), got {value}")
        if isinstance(reset_interval, bool) or not isinstance(reset_interval, int) or reset_interval < 0:
            raise ValueError(f"StableSPAM reset_interval must be an int >= 0, got {reset_interval!r}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, gamma1=gamma1,
                        gamma2=gamma2, gamma3=gamma3, reset_interval=reset_interval)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("StableSPAM does not support sparse gradients")
                self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        state = self.state[p]
        if not state:
            state["step"] = 0  # t: steps of this parameter, for the clip and norm statistics
            state["moment_step"] = 0  # k: steps since the Adam moments were last zeroed
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
            for name in ("clip_threshold", "norm_mean", "norm_sq_mean"):  # T, mu and nu
                state[name] = torch.zeros((), dtype=p.dtype, device=p.device)
        lr, eps = group["lr"], group["eps"]
        gamma1, gamma2, gamma3 = group["gamma1"], group["gamma2"], group["gamma3"]
        p.mul_(1 - lr * group["weight_decay"])
        state["step"] += 1
        t = state["step"]
        grad = p.grad
        # AdaClip: entries above the tracked, bias-corrected maximum are scaled down by
        # threshold / max. torch.where keeps the step free of host synchronisation.
        grad_max = grad.abs().max()
        state["clip_threshold"] = gamma3 * state["clip_threshold"] + (1 - gamma3) * grad_max
        threshold = state["clip_threshold"] / (1 - gamma3**t)
        grad = torch.where(grad.abs() > threshold, grad / grad_max * threshold, grad)
        # AdaGN: the whole tensor rescaled to the norm its history predicts.
        norm = torch.linalg.vector_norm(grad)
        state["norm_mean"] = gamma1 * state["norm_mean"] + (1 - gamma1) * norm
        state["norm_sq_mean"] = gamma2 * state["norm_sq_mean"] + (1 - gamma2) * norm**2
        norm_mean = state["norm_mean"] / (1 - gamma1**t)
        norm_sq_mean = state["norm_sq_mean"] / (1 - gamma2**t)
        target = norm_mean / (torch.sqrt(norm_sq_mean) + eps)
        grad = torch.where(norm > 0, grad / torch.where(norm > 0, norm, 1.0) * target, grad)
        if group["reset_interval"] and t % group["reset_interval"] == 0:
            state["exp_avg"].zero_()
            state["exp_avg_sq"].zero_()
            state["moment_step"] = 0
        state["moment_step"] += 1
        k = state["moment_step"]
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**k)).add_(eps)
        p.add_(exp_avg / denom, alpha=-lr / (1 - beta1**k))


def build_optimizer(name: str, params: Iterable[Any], *, lr: float, device: torch.device,
                    weight_decay: float = 0.0,
                    betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """The optimiser ``name`` (``OPTIMIZERS``) over ``params`` (tensors or param groups, a group's
    own ``weight_decay`` winning). ``adamw`` is ``torch.optim.AdamW``, fused on CUDA (one kernel
    per step instead of foreach launches, which bound small trials: ``scripts/bench_step.py``
    shows it); with weight decay 0 it is Adam. ``stable_spam`` is ``StableSPAM`` with the
    reference's hyperparameters."""
    if name == "adamw":
        fused = {"fused": True} if device.type == "cuda" else {}
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, **fused)
    if name == "stable_spam":
        return StableSPAM(params, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; valid: {list(OPTIMIZERS)}")
