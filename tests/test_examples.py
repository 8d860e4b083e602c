"""The examples under examples/ run (tiny sizes, on the CPU) and pass their own checks."""
from __future__ import annotations

import importlib.util
import os

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("dtype,sq", [("float32", 2), ("bfloat16", 1)])
def test_deepseek_mla_decode(dtype, sq, capsys):
    """Absorbed decode (attnx.nn.MLADecoder over the paged latent cache) equals the un-absorbed layer."""
    ex = load("deepseek_mla_decode")
    worst = ex.main(["--device", "cpu", "--dtype", dtype, "--heads", "4", "--hidden", "64", "--q-lora", "32",
                     "--batch", "3", "--cache-len", "130", "--s-q", str(sq), "--steps", "2"])
    out = capsys.readouterr().out
    assert "max relative error" in out
    assert max(worst.values()) < (1e-5 if dtype == "float32" else 2e-2), worst
