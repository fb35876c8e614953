import math

import pytest
import torch
from taskconf import one_thread  # noqa: F401 (an autouse fixture)
from taskconf import require_data, task_config
from torch import nn

from fp4sweep.quant import Recipe
from fp4sweep.quant.gemm import GemmShape
from fp4sweep.tasks import datasets, gpt
from fp4sweep.tasks.base import build_config

BF16 = Recipe.preset("bf16")


@pytest.fixture(scope="module")
def tiny_run():
    require_data("shakespeare")
    return gpt.train(task_config(gpt), BF16, seed=0)


def test_tiny_gpt_learns(tiny_run):
    assert not tiny_run.diverged
    first, last = tiny_run.curve[0], tiny_run.curve[-1]
    assert last["train_loss"] < first["train_loss"]
    vocab, _ = gpt.encoded_corpus(task_config(gpt))
    assert last["val_loss"] < first["val_loss"] < math.log(len(vocab))  # uniform guess: ln(vocab)
    assert tiny_run.metrics["perplexity"] == pytest.approx(math.exp(tiny_run.metrics["val_loss"]))
    assert set(tiny_run.metrics) == {"val_loss", "train_loss", "perplexity"}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["mxfp4", "paper_best"])
def test_tiny_gpt_learns_in_fp4(recipe):
    require_data("shakespeare")
    config = task_config(gpt, steps=20, eval_every=10)
    bf16, fp4 = (gpt.train(config, Recipe.preset(name), seed=0) for name in ("bf16", recipe))
    assert not fp4.diverged and fp4.metrics != bf16.metrics  # the layers really quantize
    assert fp4.curve[-1]["val_loss"] < fp4.curve[0]["val_loss"]


def test_same_seed_same_metrics(tiny_run):
    assert gpt.train(task_config(gpt), BF16, seed=0).metrics == tiny_run.metrics
    assert gpt.train(task_config(gpt), BF16, seed=1).metrics != tiny_run.metrics


def test_any_text_file_is_a_corpus(tmp_path):
    text = "".join(f"line {i % 7}: the quick brown fox\n" for i in range(400))
    (tmp_path / "corpus.txt").write_text(text, encoding="utf-8")
    config = task_config(gpt, corpus=str(tmp_path / "corpus.txt"), steps=20, eval_every=10)
    vocab, ids = gpt.encoded_corpus(config)
    assert vocab == "".join(sorted(set(text))) and len(ids) == len(text)
    assert "".join(vocab[i] for i in ids[:40]) == text[:40]
    run = gpt.train(config, BF16, seed=0)
    assert run.curve[-1]["val_loss"] < run.curve[0]["val_loss"]


def test_unicode_text_is_character_level(tmp_path):
    (tmp_path / "u.txt").write_text("naïve café ∑", encoding="utf-8")
    vocab, ids = gpt.encoded_corpus(build_config(gpt.Config, {"corpus": str(tmp_path / "u.txt")}))
    assert len(ids) == len("naïve café ∑") and "∑" in vocab and "ï" in vocab


def test_corpus_too_short_for_the_context_is_named(tmp_path):
    (tmp_path / "short.txt").write_text("abc" * 20, encoding="utf-8")
    config = build_config(gpt.Config, {"corpus": str(tmp_path / "short.txt"), "block_size": 16})
    with pytest.raises(ValueError, match="block_size"):
        gpt.train(config, BF16, seed=0)


def test_missing_shakespeare_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("FP4SWEEP_DATA", str(tmp_path))
    with pytest.raises(datasets.DataNotFoundError, match="fp4sweep data fetch"):
        gpt.train(task_config(gpt), BF16, seed=0)


def test_gemm_shapes_by_hand(tmp_path):
    (tmp_path / "abc.txt").write_text("abcde" * 100, encoding="utf-8")
    params = {"corpus": str(tmp_path / "abc.txt"), "n_layer": 2, "n_head": 2, "n_embd": 16,
              "block_size": 8, "batch_size": 3}
    m, d = 3 * 8, 16  # every position of every window is a row
    per_layer = [("attn.c_attn", d, 3 * d), ("attn.c_proj", d, d),
                 ("mlp.c_fc", d, 4 * d), ("mlp.c_proj", 4 * d, d)]
    expected = [GemmShape(m, k, n, name=f"blocks.{i}.{layer}")
                for i in range(2) for layer, k, n in per_layer]
    assert gpt.gemm_shapes(build_config(gpt.Config, params)) == expected  # LM head excluded
    with_head = gpt.gemm_shapes(build_config(gpt.Config, {**params, "exclude": []}))
    assert with_head == expected + [GemmShape(m, d, 5, name="lm_head")]  # vocabulary "abcde"
    model = gpt.build_model(build_config(gpt.Config, params), vocab_size=5)
    layers = [n for n, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    assert [s.name for s in with_head] == layers


def test_gpt2_small_has_124m_parameters_with_gpt2_vocabulary():
    config = build_config(gpt.Config, {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024})
    with torch.device("meta"):
        model = gpt.build_model(config, vocab_size=50257)
    # GPT-2 ties its LM head to the token embedding; count that matrix once
    total = sum(p.numel() for p in model.parameters()) - model.lm_head.weight.numel()
    assert total == pytest.approx(124.4e6, rel=0.005)


@pytest.mark.parametrize("params, message", [
    ({"n_embd": 30, "n_head": 4}, "n_head"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"steps": 0}, "steps"),
    ({"lr": "fast"}, "lr"),
])
def test_bad_config_names_the_field(params, message):
    with pytest.raises(ValueError, match=message):
        build_config(gpt.Config, params)
