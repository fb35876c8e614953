"""Counter-based random stream: known answers, reproducibility, independence, uniformity."""

import pytest
import torch

from fp4sweep.quant.rng import (
    MASK32,
    STREAM_ROUNDING,
    STREAM_SIGNS,
    fmix32,
    fmix32_int,
    random_bits,
    stream_key,
    uniform,
)


def test_fmix32_known_answers():
    # MurmurHash3's finaliser: fmix32(0) = 0 and fmix32(1) = 0x514E28B7.
    assert (fmix32_int(0), fmix32_int(1)) == (0, 0x514E28B7)


def test_tensor_fmix32_equals_integer_fmix32():
    words = torch.cat([
        torch.randint(0, 2**32, (2000,), generator=torch.Generator().manual_seed(1)),
        torch.tensor([0, 1, MASK32, MASK32 - 1, 2**31, 2**31 - 1]),
    ])
    assert fmix32(words).tolist() == [fmix32_int(w) for w in words.tolist()]


def test_same_seed_same_bits_and_streams_differ():
    counter = torch.arange(1000)
    assert torch.equal(random_bits(counter, 5), random_bits(counter, 5))
    assert (random_bits(counter, 5) != random_bits(counter, 6)).float().mean() > 0.99
    assert (random_bits(counter, 5, STREAM_SIGNS) != random_bits(counter, 5, STREAM_ROUNDING)).all()
    assert stream_key(2**40 + 3, STREAM_ROUNDING) != stream_key(3, STREAM_ROUNDING)


def test_high_counter_word_matters():
    counter = torch.arange(100)
    assert (random_bits(counter, 0) != random_bits(counter + 2**32, 0)).all()


def test_uniform_values_are_on_the_grid_and_balanced():
    u = uniform(torch.arange(200_000), seed=11, bits=24)
    assert u.dtype == torch.float32
    assert 0.0 <= u.min() and u.max() < 1.0
    assert torch.equal(u * 2**24, torch.floor(u * 2**24))
    assert abs(u.mean().item() - 0.5) < 0.003
    # Each of 16 equal bins holds its share (a loose chi-square style bound).
    counts = torch.bincount((u * 16).long(), minlength=16).float()
    assert ((counts - counts.mean()).abs() / counts.mean()).max() < 0.03
    bits8 = uniform(torch.arange(10_000), seed=11, bits=8)
    assert torch.equal(bits8 * 256, torch.floor(bits8 * 256))


def test_neighbouring_counters_are_uncorrelated():
    u = uniform(torch.arange(100_001), seed=3, bits=24).double()
    a, b = u[:-1] - 0.5, u[1:] - 0.5
    assert abs((a * b).mean().item() / (a * a).mean().item()) < 0.02


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True, "0"])
def test_bad_seeds(seed):
    with pytest.raises(ValueError, match="seed must be an int"):
        stream_key(seed, STREAM_ROUNDING)
