"""The bench CLI (python -m attnx bench): a quick CPU run, --list, and the peers' mask semantics.

The masks given to flex_attention on the GPU must describe exactly what attnx computes; here
they are checked on the CPU against attnx.reference by evaluating the mask_mod densely (no flex,
no GPU needed).
"""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import HAS_CUDA, naive_masked, rel_err

import attnx
from attnx.bench import NO_GPU_NOTICE, main
from attnx.bench import peers as P
from attnx.bench.cases import gna_plan, mean_fraction_lengths, mla_skew_lengths
from attnx.bench.common import TIMING, Ctx


def test_dense_quick_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    rc = main(["--family", "dense", "--quick", "--json", str(path), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    if not HAS_CUDA:
        assert NO_GPU_NOTICE in out
    data = json.loads(path.read_text())
    rows = data["rows"]
    assert rows and all(r["family"] == "dense" for r in rows)
    ours = [r for r in rows if r["kind"] == "attnx"]
    assert ours and all(r["check"] == "ok" and r["ms"] > 0 for r in ours)
    assert all(r["rel_err"] is not None and r["rel_err"] <= r["tolerance"] for r in ours)
    for key in ("gpu", "torch_version", "attnx_version", "date", "command"):
        assert key in data["meta"]
    assert data["meta"]["attnx_version"] == attnx.__version__
    assert "--family dense" in data["meta"]["command"]
    assert "B1 L128 H2 D64" in out or HAS_CUDA  # the table was printed


def test_json_keeps_finished_cases_of_a_stopped_run(tmp_path, monkeypatch):
    """A run stopped by a time limit (here: interrupted in its second case) leaves the first case's
    rows in the JSON, marked incomplete; a finished run marks it complete."""
    import attnx.bench as B

    real, calls = B.run_case, []

    def stop_on_second(ctx, case):
        calls.append(case.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(ctx, case)

    monkeypatch.setattr(B, "run_case", stop_on_second)
    path = tmp_path / "bench.json"
    with pytest.raises(KeyboardInterrupt):
        main(["--family", "dense", "--quick", "--json", str(path), "--no-progress"])
    data = json.loads(path.read_text())
    assert data["meta"]["complete"] is False
    assert {r["case"] for r in data["rows"]} == {calls[0]}
    assert any(r["kind"] == "attnx" and r["ms"] > 0 for r in data["rows"])

    monkeypatch.setattr(B, "run_case", real)
    assert main(["--family", "dense", "--quick", "--json", str(path), "--no-progress"]) == 0
    assert json.loads(path.read_text())["meta"]["complete"] is True


def test_case_filter_runs_only_matching_cases(tmp_path, capsys):
    path = tmp_path / "bench.json"
    rc = main(["--family", "gna", "--case", "block-sparse 2d", "--quick", "--json", str(path), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    cases = {r["case"] for r in json.loads(path.read_text())["rows"]}
    assert cases and all("block-sparse 2d" in c for c in cases), cases
    assert main(["--list", "--family", "gna", "--case", "no such case"]) == 0
    assert "    - " not in capsys.readouterr().out


def test_peer_filter_keeps_attnx_and_the_named_peers(tmp_path, capsys):
    """--peer TEXT times only the peers whose name contains TEXT; `--peer none` none; attnx always."""
    def impls(argv):
        path = tmp_path / "peers.json"
        assert main(["--family", "dense", "--case", "causal", "--quick", "--json", str(path), "--no-progress", *argv]) == 0
        data = json.loads(path.read_text())
        return {(r["impl"], r["kind"]) for r in data["rows"]}, data["meta"]["peers"]

    everything, peers = impls([])
    assert peers is None and any(k == "peer" for _, k in everything), everything
    kept, peers = impls(["--peer", "none"])
    assert peers == ["none"]
    assert kept and all(k != "peer" for _, k in kept) and kept <= everything, kept
    named = sorted(n for n, k in everything if k == "peer")[0]
    one, _ = impls(["--peer", named])
    assert {n for n, k in one if k == "peer"} == {n for n, k in everything if k == "peer" and named in n}
    assert {x for x in one if x[1] != "peer"} == kept
    capsys.readouterr()


def test_list(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for fam in ("ceilings", "dense", "varlen", "dense_bwd", "varlen_bwd", "neighborhood", "neighborhood_bwd", "gna",
                "gna_bwd", "mla", "pq_sparse"):
        assert f"  {fam}:" in out
    assert "    - " in out
    assert "ByteTransformer: " in out  # the varlen family's padded-vs-packed case


def test_backward_families_quick(tmp_path, capsys):
    """dense_bwd / varlen_bwd: the backward op timed against the reference gradients (dq, dk, dv)."""
    path = tmp_path / "bwd.json"
    rc = main(["--family", "dense_bwd", "varlen_bwd", "--quick", "--json", str(path), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = json.loads(path.read_text())["rows"]
    assert {r["family"] for r in rows} == {"dense_bwd", "varlen_bwd"}
    assert not any("ByteTransformer" in r["case"] for r in rows)
    ours = [r for r in rows if r["kind"] == "attnx"]
    # cpu-quick: one dense size, GPU quick: two; causal and not; plus the two varlen cases
    assert len(ours) == (4 if not HAS_CUDA else 6) and all(r["check"] == "ok" and r["ms"] > 0 for r in ours)
    assert all(len(r["rel_err_parts"]) == 3 and r["rel_err"] == max(r["rel_err_parts"]) for r in ours)
    assert all(r["params"]["pass"] == "backward" for r in rows)
    # FLOPs: 2.5x those of the forward case of the same sizes
    dense = next(r for r in ours if r["family"] == "dense_bwd" and not r["params"]["causal"])
    b, l, h, d = (dense["params"][x] for x in ("B", "L", "H", "D"))
    assert dense["flops"] == 2.5 * 4 * b * h * d * l * l
    peers = [r for r in rows if r["kind"] == "peer"]
    if not HAS_CUDA:  # the default SDPA backward on the CPU; varlen_attn needs CUDA
        assert [r["family"] for r in peers] == ["dense_bwd", "dense_bwd"]
    assert all(r["check"] == "ok" for r in peers if r["status"] == "ok")


def test_neighborhood_backward_family_quick(tmp_path, capsys):
    """neighborhood_bwd: the NA backward op against the reference gradients; flex's backward beside it
    (CUDA only: flex has no CPU backward)."""
    path = tmp_path / "nabwd.json"
    rc = main(["--family", "neighborhood_bwd", "--quick", "--json", str(path), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = json.loads(path.read_text())["rows"]
    ours = [r for r in rows if r["kind"] == "attnx"]
    assert ours and all(r["check"] == "ok" and len(r["rel_err_parts"]) == 3 for r in ours)
    assert all(r["params"]["pass"] == "backward" for r in rows)
    flex = [r for r in rows if r["impl"].startswith("flex")]
    assert len(flex) == len(ours) and all((r["status"] == "ok") == HAS_CUDA for r in flex)


def test_byte_transformer_lengths_and_padded_sdpa_peer():
    lens = mean_fraction_lengths(64, 512, 0.6)
    assert lens == mean_fraction_lengths(64, 512, 0.6) and len(lens) == 64
    assert abs(sum(lens) / 64 - 0.6 * 512) < 0.5 and min(lens) >= 0.2 * 512 and max(lens) <= 512

    lens, seqlen, h, d = [5, 1, 8, 3], 8, 2, 16
    cu = torch.tensor([0, 5, 6, 14, 17], dtype=torch.int32)
    q, k, v = (torch.randn(sum(lens), h, d, dtype=torch.float64) for _ in range(3))
    ref = attnx.reference.varlen_attention(q, k, v, cu, cu, max(lens), max(lens))
    ctx = Ctx(device=torch.device("cpu"), mode="cpu-quick", dtype=torch.float64, timing=TIMING["cpu-quick"])
    peer = P.padded_sdpa_peer(ctx, lens, seqlen)
    out = peer.output(peer.run(peer.prepare({"q": q, "k": k, "v": v})))
    assert rel_err(out, ref) < 1e-10


def test_mla_quick_bytes_and_skewed_beside_even(tmp_path, capsys):
    """mla: bytes count each used cache token once plus q, out and lse; the skewed batch is followed by
    the even batch holding the same tokens."""
    path = tmp_path / "mla.json"
    rc = main(["--family", "mla", "--quick", "--json", str(path), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = json.loads(path.read_text())["rows"]
    ours = [r for r in rows if r["kind"] == "attnx"]
    assert ours and all(r["check"] == "ok" for r in ours)
    for r in ours:
        p, item = r["params"], {"float32": 4, "bfloat16": 2, "float16": 2}[r["dtype"]]
        assert r["bytes"] == p["total_tokens"] * 576 * item + p["B"] * p["s_q"] * p["Hq"] * ((576 + 512) * item + 4)
        assert r["flops"] == 2 * p["Hq"] * p["s_q"] * p["total_tokens"] * (576 + 512)
    i = next(i for i, r in enumerate(ours) if r["params"].get("batch") == "skewed")
    skewed, even = ours[i]["params"], ours[i + 1]["params"]
    assert even["batch"] == "even" and even["B"] == skewed["B"] and even["total_tokens"] == skewed["total_tokens"]
    assert skewed["max_len"] > 2 * even["max_len"]
    peers = [r for r in rows if r["kind"] == "peer" and r["status"] == "ok"]
    assert peers and all(r["check"] == "ok" for r in peers)


def test_unpad_pad_quick_bytes(tmp_path, capsys):
    """unpad_pad: bytes count the token rows read and written once (plus mask or indices); every
    implementation's output checks exactly."""
    path = tmp_path / "unpad_pad.json"
    rc = main(["--family", "unpad_pad", "--quick", "--json", str(path), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    rows = json.loads(path.read_text())["rows"]
    ours = [r for r in rows if r["kind"] == "attnx"]
    assert [r["case"].split()[0] for r in ours] == ["unpad", "pad"]
    for r in ours:
        p = r["params"]
        assert p["row_bytes"] == p["H"] * p["D"] * {"float32": 4, "bfloat16": 2, "float16": 2}[r["dtype"]]
        t, rows_padded = p["total_tokens"], p["B"] * p["L"]
        expect = (2 * t * p["row_bytes"] + rows_padded if r["case"].startswith("unpad")
                  else t * p["row_bytes"] + rows_padded * p["row_bytes"] + 8 * t)
        assert r["bytes"] == expect
    assert all(r["check"] == "ok" for r in rows if r["status"] == "ok")


def test_mla_skew_lengths():
    skewed, even = mla_skew_lengths(32768, 127, 256)
    assert skewed == [32768] + [256] * 127 and even == [510] * 128
    skewed, even = mla_skew_lengths(1000, 6, 10)
    assert sum(even) == sum(skewed) == 1060 and len(even) == 7 and max(even) - min(even) <= 1


def test_unknown_family(capsys):
    assert main(["--family", "nope", "--no-progress"]) == 2


def _dense_mask(mask_mod, n):
    q = torch.arange(n)[:, None]
    kv = torch.arange(n)[None, :]
    return mask_mod(0, 0, q, kv).expand(n, n)


@pytest.mark.parametrize("spatial,ks,dil,st,ca", [
    ((13,), (5,), (2,), (1,), (False,)),
    ((13,), (5,), (1,), (3,), (True,)),
    ((12, 10), (3, 4), (2, 1), (3, 2), (False, True)),
    ((6, 7, 9), (3, 2, 4), (1, 2, 2), (2, 1, 3), (True, False, False)),
])
def test_na_mask_mod_matches_reference(spatial, ks, dil, st, ca):
    n, h, d = math.prod(spatial), 2, 8
    q, k, v = (torch.randn(1, *spatial, h, d, dtype=torch.float64) for _ in range(3))
    ref = attnx.reference.neighborhood_attention(q, k, v, ks, dilation=dil, stride=st, is_causal=ca)
    mask = _dense_mask(P.na_mask_mod(spatial, ks, dil, st, ca), n)
    qf, kf, vf = (x.reshape(n, h, d) for x in (q, k, v))
    for hh in range(h):
        out, _ = naive_masked(qf[:, hh], kf[:, hh], vf[:, hh], mask, d ** -0.5)
        assert rel_err(out, ref.reshape(n, h, d)[:, hh]) < 1e-10


@pytest.mark.parametrize("spatial,ks,st,tile", [
    ((16, 16), (8, 8), (4, 4), (4, 4)),
    ((4, 8, 8), (2, 4, 4), (2, 4, 4), (2, 2, 4)),
    ((32,), (9,), (1,), (8,)),
])
def test_gna_plan_and_tile_mask(spatial, ks, st, tile):
    index, count, allowed = gna_plan(spatial, ks, st, tile)
    res = attnx.gna.speedup_bound(spatial, ks, st, q_tile=tile, kv_tile=tile)
    assert int(count.sum()) == res["visited_kv_tiles"]
    block, n = math.prod(tile), math.prod(spatial)
    nt = index.shape[0]
    h, d = 2, 8
    q, k, v = (torch.randn(1, n, h, d, dtype=torch.float64) for _ in range(3))
    idx = torch.from_numpy(index).view(1, 1, nt, -1)
    cnt = torch.from_numpy(count).view(1, 1, nt)
    ref = attnx.reference.block_sparse_attention(q, k, v, idx, cnt, q_block=block, kv_block=block)
    mask = _dense_mask(P.tile_mask_mod(torch.from_numpy(allowed.reshape(-1)), nt, block, block), n)
    for hh in range(h):
        out, _ = naive_masked(q[0, :, hh], k[0, :, hh], v[0, :, hh], mask, d ** -0.5)
        assert rel_err(out, ref[0, :, hh]) < 1e-10


def test_document_mask_and_torch_mla():
    lens = [3, 5, 1]
    ids = torch.repeat_interleave(torch.arange(3), torch.tensor(lens))
    m = _dense_mask(P.document_mask_mod(ids, causal=True), sum(lens))
    assert m.sum() == sum(l * (l + 1) // 2 for l in lens)

    b, n, hq = 2, 100, 4
    cache = torch.randn(b * 2, 64, 1, 576, dtype=torch.float64)
    table = torch.randperm(b * 2).to(torch.int32).view(b, 2)
    seqlens = torch.tensor([n, 37], dtype=torch.int32)
    q = torch.randn(b, 1, hq, 576, dtype=torch.float64)
    ref, _ = attnx.reference.mla_decode(q, cache, table, seqlens, head_dim_v=512)
    out = P.torch_mla_decode(q, cache, table, seqlens, 512, 576 ** -0.5)
    assert rel_err(out, ref) < 1e-10


@pytest.mark.parametrize("peer", ["flash_mla", "flashinfer"])
def test_mla_optional_peer_that_does_not_import_is_not_available(peer):
    # Installed packages are used; absent or broken ones must become a NotAvailable row, not a crash.
    import importlib
    import importlib.util
    from attnx.bench.common import NotAvailable
    module = {"flash_mla": "flash_mla", "flashinfer": "flashinfer"}[peer]
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    cases = importlib.import_module("attnx.bench.cases.mla")
    impl = (cases._flash_mla_peer(None, 16, 1) if peer == "flash_mla"
            else cases._flashinfer_mla_peer(None, [64, 64], 16, 1))
    with pytest.raises(NotAvailable, match="does not import"):
        impl.setup(None)


def test_mla_block_table_uses_every_page_once():
    from attnx.bench.cases import mla_block_table
    lens = [0, 1, 64, 65, 300]
    table, seqlens = mla_block_table(lens, "cpu", generator=torch.Generator().manual_seed(1))
    pages = [-(-n // 64) for n in lens]
    assert seqlens.tolist() == lens and table.shape == (len(lens), max(pages)) and table.dtype == torch.int32
    used = torch.cat([table[b, :p] for b, p in enumerate(pages)])
    assert sorted(used.tolist()) == list(range(sum(pages)))
    assert all((table[b, p:] == 0).all() for b, p in enumerate(pages))
