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
    slot_bits,
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


@pytest.mark.parametrize("bits", [1, 8, 9, 16, 17, 24])
def test_narrow_uniforms_share_a_word_as_the_module_says(bits):
    """Up to 8 bits: byte counter % 4 of word counter // 4; up to 16: half counter % 2 of word
    counter // 2; wider: the word of the counter. Each number is the top of its slot."""
    counter = torch.arange(4000) + 2**32 - 2000  # across the high counter word too
    width = slot_bits(bits)
    assert width == (8 if bits <= 8 else 16 if bits <= 16 else 32)
    per_word = 32 // width
    words = random_bits(counter // per_word, 21).tolist()
    expected = [(word >> (width * (c % per_word) + width - bits)) % 2**bits
                for word, c in zip(words, counter.tolist())]
    assert (uniform(counter, 21, bits) * 2**bits).long().tolist() == expected


@pytest.mark.parametrize("bits", [8, 12])
def test_numbers_from_one_word_are_balanced_and_uncorrelated(bits):
    u = uniform(torch.arange(200_000), seed=5, bits=bits).double()
    assert abs(u.mean().item() - 0.5) < 0.003
    counts = torch.bincount((u * 16).long(), minlength=16).float()
    assert ((counts - counts.mean()).abs() / counts.mean()).max() < 0.03
    a = u.view(-1, 4) - u.mean()  # four consecutive counters: one word (8 bits) or two (12)
    for i in range(4):
        for j in range(i + 1, 4):
            assert abs((a[:, i] * a[:, j]).mean().item() / a.var().item()) < 0.02


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, True, "0"])
def test_bad_seeds(seed):
    with pytest.raises(ValueError, match="seed must be an int"):
        stream_key(seed, STREAM_ROUNDING)
