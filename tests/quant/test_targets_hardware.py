"""Targets and machines as data: what the files hold, and a clear error for a bad one."""

import pytest

from fp4sweep.quant import data_files
from fp4sweep.quant.hardware import Hardware, hardware_names, load_hardware
from fp4sweep.quant.targets import load_target, target_names


def test_shipped_targets():
    assert target_names() == ["gpt2_small", "llama3_8b", "task"]
    llama = load_target("llama3_8b")
    assert {s.m for s in llama.shapes} == {16384}
    qkv = next(s for s in llama.shapes if s.name == "self_attn.qkv_proj")
    assert (qkv.k, qkv.n, qkv.count) == (4096, 4096 + 2 * 8 * 128, 32)  # GQA: 8 KV heads of 128
    assert sum(s.count for s in llama.shapes) == 5 * 32
    gpt2 = load_target("gpt2_small")
    assert sum(s.k * s.n * s.count for s in gpt2.shapes) == 12 * 12 * 768 * 768  # 85M in linears
    assert load_target("task").from_task and not llama.from_task


def test_shipped_hardware():
    assert hardware_names() == ["b200", "b300", "h200"]
    b200 = load_hardware("b200")
    assert b200.memory_bytes == 7.67e12 and b200.fp4_flops == 4 * b200.bf16_flops
    h200 = load_hardware("h200")
    assert not h200.native_fp4 and h200.gemm_flops(None) == h200.bf16_flops


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown target 'gpt3'; valid: \['gpt2_small', 'llama3_8b', 'task'\]"):
        load_target("gpt3")
    with pytest.raises(ValueError, match=r"unknown hardware 'a100'; valid: \['b200', 'b300', 'h200'\]"):
        load_hardware("a100")


@pytest.fixture
def conf_dir(tmp_path, monkeypatch):
    """A config tree of the test's own, read in place of the package's."""
    monkeypatch.setattr(data_files, "CONF_DIR", tmp_path)
    return tmp_path


def write(conf_dir, kind: str, files: dict[str, str]) -> None:
    folder = conf_dir / kind
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def test_a_malformed_target_names_its_file(conf_dir):
    write(conf_dir, "target", {
        "bad.yaml": "tokens: 128\nlayers: [{k: 64}]\n",
        "empty.yaml": "tokens: 128\n",
        "zero.yaml": "tokens: 128\nlayers: [{k: 64, n: 0}]\n",
    })
    with pytest.raises(ValueError, match=r"bad.yaml: a layer is a mapping of k, n"):
        load_target("bad")
    with pytest.raises(ValueError, match=r"empty.yaml: needs tokens \(an int\) and a non-empty list of layers"):
        load_target("empty")
    with pytest.raises(ValueError, match=r"GemmShape.n must be a positive int, got 0"):
        load_target("zero")


def test_a_malformed_machine_names_its_fault(conf_dir):
    # YAML reads 9.0e15 (no sign in the exponent) as text
    text = "name: X\nfp4_flops: 9.0e15\nfp8_flops: 1.0e+15\nbf16_flops: 1.0e+15\nvector_ops: 1.0e+12\nmemory_bytes: 1.0e+12\n"
    write(conf_dir, "hardware", {"typo.yaml": "name: X\nfp4_flop: 1.0e+15\n", "text.yaml": text})
    with pytest.raises(ValueError, match=r"typo.yaml: unknown or malformed keys \['fp4_flop'\]"):
        load_hardware("typo")
    with pytest.raises(ValueError, match=r"Hardware 'X': fp4_flops must be a positive number, got '9.0e15'"):
        load_hardware("text")
    with pytest.raises(ValueError, match=r"memory_efficiency must be in \(0, 1\]"):
        Hardware("X", 1e15, 1e15, 1e15, 1e12, 1e12, memory_efficiency=1.5)
