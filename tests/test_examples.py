"""The examples under examples/ run (tiny sizes, on the CPU) and pass their own checks."""
from __future__ import annotations

import csv
import importlib.util
import math
import os
import xml.etree.ElementTree as ET

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
SVG = "{http://www.w3.org/2000/svg}"


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


def test_pq_sparse_finetune_outputs(tmp_path, capsys):
    """Dense and PQ-sparse twins train a few steps; one CSV row per step with finite losses, a
    final held-out row, a well-formed SVG with one polyline per curve, and a printed summary."""
    ex = load("pq_sparse_finetune")
    steps = 3
    summary = ex.main(["--device", "cpu", "--steps", str(steps), "--seq-len", "64", "--k-top", "8", "--dim", "128",
                       "--layers", "1", "--batch", "2", "--pretrain-steps", "2", "--eval-every", "2",
                       "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "ratio sparse/dense" in out and "time per step" in out

    with open(tmp_path / "pq_sparse_finetune.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(steps + 1))
    for r in rows[:steps]:  # every training step has both train losses
        assert math.isfinite(float(r["dense_loss"])) and math.isfinite(float(r["pq_sparse_loss"])), r
    # held-out losses at steps 0 and 2 (--eval-every 2) and after the last update
    for r in (rows[0], rows[2], rows[steps]):
        assert math.isfinite(float(r["dense_eval_loss"])) and math.isfinite(float(r["pq_sparse_eval_loss"])), r
    assert rows[1]["dense_eval_loss"] == "" and rows[steps]["dense_loss"] == ""
    # same init and same data: the very first losses of the twins differ only by the sparse selection
    assert abs(float(rows[0]["dense_loss"]) - float(rows[0]["pq_sparse_loss"])) < 0.5

    root = ET.parse(tmp_path / "pq_sparse_finetune.svg").getroot()
    assert root.tag == f"{SVG}svg"
    curves = [p for p in root.iter(f"{SVG}polyline") if p.get("class") == "series"]
    assert len(curves) >= 2  # dense and PQ-sparse (train; the held-out curves come on top)
    for p in curves:
        assert len(p.get("points").split()) >= 2
    text = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "L=64" in text and "k_top=8" in text

    assert math.isfinite(summary["ratio"]) and summary["ratio"] > 0
