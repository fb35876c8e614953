"""High-precision layer policies: which blocks of a model a recipe keeps in bf16.

FP4 recipes keep some layers out of FP4 besides the stem and head that a task always keeps
(Megatron's ``--num-layers-at-end-in-bf16``; NVIDIA's NVFP4 recipe keeps its final blocks in
bf16). A policy is one of

    none            every block quantized
    firstN, lastN   the first / last N blocks in bf16 (all blocks when the model has fewer)
    firstN_lastM    both
    attn, mlp       that kind of layer in every block (models that have kinds: GPT)

A task says what its blocks are (GPT blocks, CNN stages, U-Net levels, see ``fp4sweep.tasks``);
this module turns a policy into the module-name patterns that ``quantize_model`` excludes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

KINDS = ("attn", "mlp")
_POLICY = re.compile(r"none|(?P<kind>attn|mlp)|first(?P<first>\d+)(?:_last(?P<both>\d+))?|last(?P<last>\d+)")


@dataclass(frozen=True)
class LayerPolicy:
    first: int = 0  # leading blocks kept in bf16
    last: int = 0  # trailing blocks kept in bf16
    kind: str | None = None  # a kind of layer kept in bf16 in every block


def parse_policy(text: str) -> LayerPolicy:
    """The policy a name spells; ValueError names the forms for anything else."""
    match = _POLICY.fullmatch(text) if isinstance(text, str) else None
    counts = [int(n) for n in (match.group("first", "both", "last") if match else ()) if n is not None]
    if match is None or any(n < 1 for n in counts):
        raise ValueError(
            f"unknown high-precision layer policy {text!r}; valid: none, firstN, lastN, "
            f"firstN_lastM (N, M >= 1), {', '.join(KINDS)}"
        )
    first, both, last = (int(n) if n else 0 for n in match.group("first", "both", "last"))
    return LayerPolicy(first=first, last=last or both, kind=match["kind"])


def high_precision_layers(
    policy: str, blocks: Sequence[Sequence[str]], kinds: Mapping[str, Sequence[str]]
) -> tuple[str, ...]:
    """The module-name patterns (``quantize_model``'s ``exclude`` syntax) that ``policy`` keeps in
    bf16, given a model's blocks in forward order (each a group of patterns) and its kinds."""
    rule = parse_policy(policy)
    if rule.kind is not None:
        if rule.kind not in kinds:
            raise ValueError(
                f"high-precision policy {policy!r}: this model has no {rule.kind!r} layers; "
                f"its kinds: {sorted(kinds) or 'none'}"
            )
        return tuple(kinds[rule.kind])
    chosen = list(blocks[: rule.first]) + list(blocks[len(blocks) - min(rule.last, len(blocks)) :])
    return tuple(dict.fromkeys(pattern for block in chosen for pattern in block))
