import importlib
import io
import math

import pytest
import torch
from taskconf import one_thread  # noqa: F401 (an autouse fixture)
from taskconf import require_data, task_config
from torch import nn

from fp4sweep.quant import Recipe

from fp4sweep.tasks.optimizers import StableSPAM, build_optimizer

# Round numbers for the hand-worked steps: every decay 1/2, eps 0.
HALVES = dict(betas=(0.5, 0.5), eps=0.0, gamma1=0.5, gamma2=0.5, gamma3=0.5)


def _step(optimizer, weight, grad):
    weight.grad = torch.tensor(grad, dtype=weight.dtype)
    optimizer.step()


def test_first_step_is_adams_sign_step_after_decoupled_decay():
    weight = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    optimizer = StableSPAM([weight], lr=0.1, weight_decay=0.5, **HALVES)
    _step(optimizer, weight, [3.0, -4.0, 12.0])
    # Step 1: the threshold is max|g| itself (nothing clipped), AdaGN rescales g to unit norm
    # (mu^ = n, sqrt(nu^) = n), and Adam's first step is lr * sign; decay first: p (1 - lr wd).
    expected = torch.tensor([1.0, -2.0, 0.5]) * (1 - 0.1 * 0.5) - 0.1 * torch.tensor([1.0, -1.0, 1.0])
    assert torch.equal(weight.detach(), expected)
    state = optimizer.state[weight]
    assert state["clip_threshold"].item() == 6.0  # (1 - 1/2) * 12
    assert state["norm_mean"].item() == 6.5 and state["norm_sq_mean"].item() == 84.5  # n = 13
    assert weight.grad.tolist() == [3.0, -4.0, 12.0]  # the parameter's gradient is left alone


def test_a_spike_is_clipped_to_the_tracked_threshold_and_a_reset_restarts_adam():
    weight = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    optimizer = StableSPAM([weight], lr=1.0, reset_interval=3, **HALVES)
    _step(optimizer, weight, [3.0, 4.0])
    assert weight.tolist() == pytest.approx([-1.0, -1.0], rel=1e-15)
    _step(optimizer, weight, [0.0, 40.0])  # a spike
    state = optimizer.state[weight]
    # T_2 = (2 + 40) / 2 = 21, bias-corrected 21 / (1 - 1/4) = 28 < 40: the entry becomes
    # 40 / 40 * 28 = 28, so the norm that AdaGN tracks is 28, not 40.
    assert state["clip_threshold"].item() == 21.0
    assert state["norm_mean"].item() == (2.5 + 28.0) / 2
    assert state["norm_sq_mean"].item() == (12.5 + 28.0**2) / 2
    # Element 0 has g^ = 0 now: m^ = (0.3 / 2) / (3/4) = 0.2, v^ = (0.18 / 2) / (3/4) = 0.12.
    assert weight[0].item() == pytest.approx(-1.0 - 0.2 / math.sqrt(0.12), rel=1e-14)
    before = weight.detach().clone()
    _step(optimizer, weight, [3.0, 4.0])  # t = 3: the moments are zeroed first
    assert state["moment_step"] == 1 and state["step"] == 3
    # From zeroed moments the update is Adam's first step again: lr * sign(g).
    assert torch.allclose(weight.detach(), before - 1.0, rtol=0, atol=1e-14)
    target = state["exp_avg"] / 0.5  # m = (1 - beta1) g^ after a reset
    assert target.norm().item() == pytest.approx(_adagn_target(3, [2.5, 15.25, 10.125],
                                                                [12.5, 398.25, 211.625]), rel=1e-14)


def _adagn_target(t, means, squares):
    mu, nu = means[t - 1] / (1 - 0.5**t), squares[t - 1] / (1 - 0.5**t)
    return mu / math.sqrt(nu)


def _equations(params, grads, lr, betas, eps, wd, gamma1, gamma2, gamma3, reset_interval):
    """The paper's equations, element by element in float64: the oracle."""
    beta1, beta2 = betas
    p = list(params)
    m, v = [0.0] * len(p), [0.0] * len(p)
    threshold = mean = square = 0.0
    k = 0
    for t, g in enumerate(grads, start=1):
        p = [x * (1 - lr * wd) for x in p]
        g_max = max(abs(x) for x in g)
        threshold = gamma3 * threshold + (1 - gamma3) * g_max
        t_hat = threshold / (1 - gamma3**t)
        g = [x / g_max * t_hat if abs(x) > t_hat else x for x in g]
        n = math.sqrt(sum(x * x for x in g))
        mean = gamma1 * mean + (1 - gamma1) * n
        square = gamma2 * square + (1 - gamma2) * n * n
        c = (mean / (1 - gamma1**t)) / (math.sqrt(square / (1 - gamma2**t)) + eps)
        if n > 0:
            g = [x / n * c for x in g]
        if reset_interval and t % reset_interval == 0:
            m, v, k = [0.0] * len(p), [0.0] * len(p), 0
        k += 1
        m = [beta1 * a + (1 - beta1) * x for a, x in zip(m, g)]
        v = [beta2 * a + (1 - beta2) * x * x for a, x in zip(v, g)]
        p = [x - lr / (1 - beta1**k) * a / (math.sqrt(b) / math.sqrt(1 - beta2**k) + eps)
             for x, a, b in zip(p, m, v)]
    return p


@pytest.mark.parametrize("reset_interval", [0, 4])
def test_several_steps_follow_the_papers_equations(reset_interval):
    generator = torch.Generator().manual_seed(0)
    grads = [torch.randn(12, generator=generator, dtype=torch.float64) for _ in range(9)]
    grads[5][3] = 50.0  # a spike that the threshold clips (checked below)
    grads[6] = grads[6] * 1e-3  # a step whose norm collapses: AdaGN scales it back up
    settings = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, gamma1=0.7,
                    gamma2=0.9, gamma3=0.999, reset_interval=reset_interval)
    start = torch.randn(12, generator=generator, dtype=torch.float64)
    weight = nn.Parameter(start.clone())
    optimizer = StableSPAM([weight], **settings)
    clipped = []
    for g in grads:
        weight.grad = g.clone()
        optimizer.step()
        clipped.append(optimizer.state[weight]["norm_mean"].item())
    expected = _equations(start.tolist(), [g.tolist() for g in grads], settings["lr"],
                          settings["betas"], settings["eps"], settings["weight_decay"],
                          settings["gamma1"], settings["gamma2"], settings["gamma3"], reset_interval)
    assert weight.detach().tolist() == pytest.approx(expected, rel=1e-12, abs=1e-14)
    # The spike was clipped: the tracked norm moved far less than the raw one would have.
    raw_norm = grads[5].norm().item()
    assert clipped[5] < settings["gamma1"] * clipped[4] + (1 - settings["gamma1"]) * raw_norm - 1.0
    # Resets at steps 4 and 8: step 9 is the second since the last.
    assert optimizer.state[weight]["moment_step"] == {0: 9, 4: 2}[reset_interval]


def test_param_groups_keep_their_own_weight_decay():
    decayed, kept = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    optimizer = build_optimizer("stable_spam", [{"params": [decayed], "weight_decay": 0.5},
                                                {"params": [kept], "weight_decay": 0.0}],
                                lr=0.1, device=torch.device("cpu"))
    for p in (decayed, kept):
        p.grad = torch.zeros(2)  # no gradient signal: only the decay moves a weight
    optimizer.step()
    assert torch.equal(decayed.detach(), torch.full((2,), 0.95))
    assert torch.equal(kept.detach(), torch.ones(2))


@pytest.mark.parametrize("bad, match", [
    (dict(lr=-1.0), "lr"), (dict(betas=(1.0, 0.9)), "betas"), (dict(gamma3=1.0), "gamma3"),
    (dict(reset_interval=-1), "reset_interval"), (dict(reset_interval=2.5), "reset_interval"),
    (dict(weight_decay=-0.1), "weight_decay"),
])
def test_bad_hyperparameters_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        StableSPAM([nn.Parameter(torch.ones(1))], **bad)


def test_reference_defaults():
    defaults = StableSPAM([nn.Parameter(torch.ones(1))]).defaults
    assert defaults == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, gamma1=0.7,
                            gamma2=0.9, gamma3=0.999, reset_interval=1000)


def test_adamw_without_decay_is_adam_bit_for_bit():
    generator = torch.Generator().manual_seed(1)
    grads = [torch.randn(8, generator=generator) for _ in range(5)]
    weights = [nn.Parameter(torch.ones(8)) for _ in range(2)]
    optimizers = [build_optimizer("adamw", [weights[0]], lr=0.1, device=torch.device("cpu")),
                  torch.optim.Adam([weights[1]], lr=0.1)]
    for g in grads:
        for weight, optimizer in zip(weights, optimizers):
            weight.grad = g.clone()
            optimizer.step()
    assert torch.equal(weights[0], weights[1])


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs CUDA")])])
def test_adamw_is_fused_on_cuda_only(device):
    device = torch.device(device)
    weight = nn.Parameter(torch.ones(4, device=device))
    optimizer = build_optimizer("adamw", [weight], lr=0.1, weight_decay=0.01, device=device)
    # CPU runs keep PyTorch's default implementation, so their results stay as they were.
    assert optimizer.defaults["fused"] is (True if device.type == "cuda" else None)
    weight.grad = torch.full_like(weight, 2.0)
    optimizer.step()
    # Adam's first step moves every weight by lr against its gradient's sign, after decay.
    expected = 1.0 * (1 - 0.1 * 0.01) - 0.1
    assert torch.allclose(weight.detach().cpu(), torch.full((4,), expected))


def test_unknown_optimizer():
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'; valid: \\['adamw', 'stable_spam'\\]"):
        build_optimizer("sgd", [nn.Parameter(torch.ones(1))], lr=0.1, device=torch.device("cpu"))


def test_state_survives_a_checkpoint():
    generator = torch.Generator().manual_seed(2)
    grads = [torch.randn(6, generator=generator) for _ in range(6)]
    weights = [nn.Parameter(torch.ones(6)) for _ in range(2)]
    first = StableSPAM([weights[0]], reset_interval=4)
    for g in grads[:3]:
        weights[0].grad = g.clone()
        first.step()
    weights[1].data.copy_(weights[0].data)
    resumed = StableSPAM([weights[1]], reset_interval=4)
    saved = io.BytesIO()
    torch.save(first.state_dict(), saved)
    saved.seek(0)
    resumed.load_state_dict(torch.load(saved))
    for g in grads[3:]:  # across the reset at step 4
        for weight, optimizer in zip(weights, (first, resumed)):
            weight.grad = g.clone()
            optimizer.step()
    assert torch.equal(weights[0], weights[1])


TASK_OVERRIDES = {"regression": dict(steps=4, eval_every=2), "classification": dict(train_examples=64),
                  "diffusion": dict(steps=4, batch_size=4, eval_every=2, sample_count=0),
                  "gpt": dict(steps=4, eval_every=2)}
TASK_DATA = {"classification": "fashion_mnist", "diffusion": "fashion_mnist", "gpt": "shakespeare"}


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name == "diffusion" else name
                                  for name in TASK_OVERRIDES])  # a quantized U-Net is slow on a CPU
def test_every_task_trains_with_the_recipes_optimizer_and_loss_scale(name, monkeypatch):
    if name in TASK_DATA:
        require_data(TASK_DATA[name])
    module = importlib.import_module(f"fp4sweep.tasks.{name}")
    built = []

    def recording(*args, **kwargs):
        built.append(build_optimizer(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(module, "build_optimizer", recording)
    recipe = Recipe.from_axes(optimizer="stable_spam", loss_scale="dynamic", block=16)
    result = module.train(task_config(module, **TASK_OVERRIDES[name]), recipe, seed=0)
    assert [type(optimizer) for optimizer in built] == [StableSPAM]
    assert all(optimizer.state[p]["step"] > 0 for optimizer in built
               for group in optimizer.param_groups for p in group["params"])
    assert result.curve[-1]["loss_scale"] == 2.0**16 and not result.diverged
