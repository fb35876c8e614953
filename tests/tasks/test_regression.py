"""The regression task: it learns, FP4 costs it something, seeds and divergence behave."""

from __future__ import annotations

import math

import pytest
import torch

from fp4sweep.quant import GemmShape, QuantLinear, Recipe
from fp4sweep.tasks import load_task
from fp4sweep.tasks.base import build_config
from fp4sweep.tasks.regression import Config, Student, gemm_shapes, make_data, train

SMALL = Config(n_train=1024, n_val=256, n_features=32, n_outputs=32, steps=150, batch_size=128, eval_every=50)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_bf16_reaches_the_noise_floor():
    result = train(SMALL, Recipe.preset("bf16"), seed=0)
    noise = SMALL.noise_std**2
    assert not result.diverged
    assert noise * 0.8 < result.metrics["val_loss"] < noise * 1.5
    assert noise * 0.8 < result.metrics["train_loss"] < noise * 1.5
    assert [p["step"] for p in result.curve] == [50, 100, 150]
    assert result.curve[0]["val_loss"] > result.curve[-1]["val_loss"]
    assert result.gemm_shapes == [GemmShape(128, 32, 32, name="linear")]


def test_fp4_trains_through_quantized_layers_and_pays_for_it():
    bf16 = train(SMALL, Recipe.preset("bf16"), seed=0).metrics["val_loss"]
    mxfp4 = train(SMALL, Recipe.preset("mxfp4"), seed=0).metrics["val_loss"]
    assert bf16 < mxfp4 < 20 * bf16  # worse than bf16, but it learnt (the targets' variance is ~1)


def test_the_student_is_quantized_through_quantize_model(monkeypatch):
    seen = []
    import fp4sweep.tasks.regression as regression

    def spy(model, recipe, exclude, seed, layout):
        result = quantize(model, recipe, exclude, seed, layout)
        seen.append(type(result.linear))
        return result

    quantize = regression.quantize
    monkeypatch.setattr(regression, "quantize", spy)
    train(SMALL, Recipe.preset("nvfp4"), seed=0)
    assert seen == [QuantLinear]


def test_same_seed_same_run_other_seed_other_run():
    first = train(SMALL, Recipe.preset("nvfp4"), seed=3)
    again = train(SMALL, Recipe.preset("nvfp4"), seed=3)
    other = train(SMALL, Recipe.preset("nvfp4"), seed=4)
    assert first.metrics == again.metrics and first.curve == again.curve
    assert first.metrics != other.metrics


def test_the_data_is_the_same_for_every_trial():
    x, y, x_val, y_val = make_data(SMALL, torch.device("cpu"))
    again = make_data(SMALL, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip((x, y, x_val, y_val), again))
    assert x.shape == (1024, 32) and y_val.shape == (256, 32)
    assert abs(x.mean().item()) < 0.02 and abs(x.std().item() - 1) < 0.02


def test_a_blow_up_is_diverged():
    result = train(Config(**{**SMALL.__dict__, "lr": math.inf}), Recipe.preset("bf16"), seed=0)
    assert result.diverged and math.isnan(result.metrics["val_loss"])


def test_the_task_api_and_config_checks():
    module = load_task("fp4sweep.tasks.regression")
    assert module.NAME == "regression"
    assert build_config(Config, {"n_features": 16, "lr": 1}).lr == 1.0
    assert gemm_shapes(Config(batch_size=64)) == [GemmShape(64, 64, 32, name="linear")]
    assert isinstance(Student(Config()).linear, torch.nn.Linear)
    with pytest.raises(ValueError, match="batch_size 512 exceeds n_train 256"):
        Config(n_train=256, batch_size=512)
    with pytest.raises(ValueError, match=r"Config.steps must be > 0, got 0"):
        Config(steps=0)
    with pytest.raises(ValueError, match=r"Config.lr must be > 0, got -0.1"):
        Config(lr=-0.1)
    with pytest.raises(ValueError, match=r"Config.noise_std must be >= 0, got -1"):
        Config(noise_std=-1.0)


def test_a_delayed_amax_records_the_elements_beyond_it():
    held = train(SMALL, Recipe.from_axes(tensor_scale="fp32", amax="hold50"), seed=0)
    fractions = [point["beyond_amax_fraction"] for point in held.curve]
    assert len(fractions) == 3 and all(0 < f < 1 for f in fractions)
    # the final metric is the whole run's, as the last point of the curve
    assert held.metrics["beyond_amax_fraction"] == fractions[-1]
    current = train(SMALL, Recipe.from_axes(tensor_scale="fp32"), seed=0)
    assert "beyond_amax_fraction" not in current.metrics  # nothing delayed, nothing to count
    assert all("beyond_amax_fraction" not in point for point in current.curve)


def test_outlier_features_scale_evenly_spaced_channels():
    plain = make_data(SMALL, torch.device("cpu"))
    config = Config(**{**SMALL.__dict__, "outlier_features": 4, "outlier_scale": 10.0})
    x_train, y_train, x_val, _ = make_data(config, torch.device("cpu"))
    channels = [0, 8, 16, 24]
    assert torch.equal(x_train[:, channels], 10.0 * plain[0][:, channels])
    others = [c for c in range(32) if c not in channels]
    assert torch.equal(x_train[:, others], plain[0][:, others])
    assert not torch.equal(y_train, plain[1])  # the teacher sees the scaled features
    with pytest.raises(ValueError, match="outlier_features"):
        Config(n_features=8, outlier_features=9)
