"""GPT: a nanoGPT-style decoder trained as a character-level language model.

The corpus is the Shakespeare texts (``corpus: shakespeare``) or any plain-text file (its path);
the vocabulary is the corpus' set of characters, the last ``val_fraction`` of it is held out.
The model is GPT-2's: pre-LayerNorm blocks of causal self-attention and a 4x MLP, learned
positions, from a tiny CPU size up to GPT-2 small (n_layer=12, n_head=12, n_embd=768: 124M
parameters with GPT-2's vocabulary). Every Linear layer runs through the recipe except the LM
head, kept in high precision by default as in the paper; the LM head is not tied to the token
embedding so that it can be quantized, or not, on its own. Attention's two batched matmuls are
not Linear layers and stay in high precision.

Metrics: ``val_loss`` in nats per character on fixed held-out windows (the same for every recipe
and seed), ``perplexity`` = exp(val_loss), ``train_loss``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fp4sweep.quant import Recipe
from fp4sweep.quant.gemm import GemmShape
from fp4sweep.quant.recipe import NO_POLICY
from fp4sweep.tasks import datasets
from fp4sweep.tasks.base import TaskResult
from fp4sweep.tasks.checks import check_non_negative, check_positive
from fp4sweep.tasks.optimizers import build_optimizer
from fp4sweep.tasks.training import (LayerLayout, fit, quantize, resolve_device, seeded, task_result,
                                     to_device, trace_gemm_shapes, warmup_cosine)

NAME = "gpt"
VAL_WINDOWS_SEED = 4321  # held-out windows are drawn once from this seed, not the trial's


@dataclass(frozen=True)
class Config:
    corpus: str = "shakespeare"  # "shakespeare" (fetched) or the path of a plain-text file
    val_fraction: float = 0.1
    block_size: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    steps: int = 5000
    batch_size: int = 64
    lr: float = 1e-3  # AdamW, linear warm-up then cosine decay to min_lr
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_batches: int = 20  # held-out batches of batch_size windows per evaluation
    # Validation through the recipe's quantized forward (the model as deployed in FP4) or in the
    # model's own precision (the trained weights' quality); conf/task/*.yaml says why the default.
    eval_quantized: bool = True
    exclude: tuple[str, ...] = ("lm_head",)  # layers kept in high precision

    def __post_init__(self) -> None:
        check_positive(self, "val_fraction", "block_size", "n_layer", "n_head", "n_embd", "steps",
                       "batch_size", "lr", "eval_every", "eval_batches")
        check_non_negative(self, "min_lr", "warmup_steps", "weight_decay", "grad_clip")
        if self.val_fraction >= 1:
            raise ValueError(f"Config.val_fraction must be below 1, got {self.val_fraction}")
        if self.n_embd % self.n_head:
            raise ValueError(f"Config.n_embd ({self.n_embd}) must be a multiple of "
                             f"n_head ({self.n_head})")


# ---------------------------------------------------------------------------------------------
# Model


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.c_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int) -> None:
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        # GPT-2's initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))
            elif p.dim() == 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias") and "ln" not in name:
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, vocab) of the next character at every position of ``idx`` (B, T)."""
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(positions)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


# ---------------------------------------------------------------------------------------------
# Data


@functools.lru_cache(maxsize=2)
def _encoded(path: str) -> tuple[str, np.ndarray]:
    """A corpus' characters (sorted) and the corpus as indices into them."""
    text = datasets.read_text(path)
    if len(text) < 2:
        raise ValueError(f"text corpus {path} holds fewer than 2 characters")
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    chars, ids = np.unique(codepoints, return_inverse=True)
    ids.flags.writeable = False
    return "".join(map(chr, chars)), ids


def encoded_corpus(config: Config) -> tuple[str, np.ndarray]:
    return _encoded(str(datasets.corpus_path(config.corpus)))


def build_model(config: Config, vocab_size: int) -> GPT:
    return GPT(vocab_size, config.block_size, config.n_layer, config.n_head, config.n_embd)


def layout(config: Config) -> LayerLayout:
    """The transformer blocks, and the attention and MLP layers of each, for a layer policy."""
    return LayerLayout(
        blocks=tuple((f"blocks.{i}",) for i in range(config.n_layer)),
        kinds={"attn": ("blocks.*.attn",), "mlp": ("blocks.*.mlp",)},
    )


def gemm_shapes(config: Config, policy: str = NO_POLICY) -> list[GemmShape]:
    """The GEMMs of one training step (one forward of a batch), traced on ``meta``; those the
    layer ``policy`` keeps in bf16 are marked.

    The vocabulary size (the LM head's shape) is the corpus', so the corpus must be there.
    """
    vocab, _ = encoded_corpus(config)
    with torch.device("meta"):
        model = build_model(config, len(vocab))
        idx = torch.zeros(config.batch_size, config.block_size, dtype=torch.long)
    return trace_gemm_shapes(model, lambda m: m(idx), config.exclude, layout(config), policy)


def _windows(data: torch.Tensor, starts: torch.Tensor, block_size: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-character targets of the windows starting at ``starts``."""
    chunk = data[starts[:, None] + torch.arange(block_size + 1)]
    return chunk[:, :-1], chunk[:, 1:]


def _splits(config: Config) -> tuple[torch.Tensor, torch.Tensor, int]:
    vocab, ids = encoded_corpus(config)
    data = torch.tensor(ids, dtype=torch.long)
    n_val = int(len(data) * config.val_fraction)
    train, val = data[:-n_val], data[-n_val:]
    for split, part in (("training", train), ("held-out", val)):
        if len(part) <= config.block_size:
            raise ValueError(f"the {split} part of {config.corpus!r} ({len(part)} characters) is "
                             f"not longer than block_size ({config.block_size})")
    return train, val, len(vocab)


def train(config: Config, recipe: Recipe, seed: int, device: str | torch.device = "cpu") -> TaskResult:
    device = resolve_device(device)
    generator = seeded(seed)
    train_data, val_data, vocab_size = _splits(config)
    val_starts = torch.randint(len(val_data) - config.block_size,
                               (config.eval_batches, config.batch_size),
                               generator=torch.Generator().manual_seed(VAL_WINDOWS_SEED))
    model = quantize(build_model(config, vocab_size).to(device), recipe, config.exclude, seed, layout(config))
    # Weight decay on matrices only, as nanoGPT does.
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    optimizer = build_optimizer(recipe.optimizer,
                                [{"params": matrices, "weight_decay": config.weight_decay},
                                 {"params": others, "weight_decay": 0.0}],
                                lr=config.lr, betas=(0.9, 0.99), device=device)

    def loss_on(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(to_device(x, device))
        return F.cross_entropy(logits.flatten(0, 1), to_device(y, device).flatten())

    def loss_at(step: int) -> torch.Tensor:
        starts = torch.randint(len(train_data) - config.block_size, (config.batch_size,),
                               generator=generator)
        return loss_on(*_windows(train_data, starts, config.block_size))

    def evaluate() -> dict[str, float]:
        losses = [loss_on(*_windows(val_data, starts, config.block_size)).item()
                  for starts in val_starts]
        return {"val_loss": sum(losses) / len(losses)}

    def lr_at(step: int) -> float:
        return warmup_cosine(step, config.steps, config.lr, config.warmup_steps, config.min_lr)

    log = fit(model, optimizer, loss_at, steps=config.steps, lr_at=lr_at,
              evaluate=evaluate, eval_every=config.eval_every, grad_clip=config.grad_clip,
              loss_scale=recipe.loss_scale, eval_quantized=config.eval_quantized)
    perplexity = math.exp(min(log.last.get("val_loss", math.inf), 700.0))
    return task_result(log, gemm_shapes(config, recipe.high_precision), extra_metrics={"perplexity": perplexity})
