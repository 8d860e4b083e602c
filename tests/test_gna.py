"""attnx.gna: the GNA speedup-bound simulator against a brute-force count.

The brute force below enumerates every query's key set from the definition (DESIGN.md,
neighborhood_attention) with plain Python loops, assigns every token to its tile, and counts
visited tile pairs directly. Nothing in it comes from attnx.
"""
from __future__ import annotations

import io
import itertools
import json
import math
import random
import re
import time
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout

import pytest

from attnx import gna


# ----------------------------------------------------------------------------------------------
# brute force
# ----------------------------------------------------------------------------------------------
def brute_axis(n, k, d, s, causal):
    """Key positions of every position of one axis (lists)."""
    out = []
    for p in range(n):
        members = list(range(p % d, n, d))  # the dilation group of p, in order
        nr = len(members)
        i = members.index(p)
        if causal:
            leader = min((i // s) * s + s - 1, nr - 1)
            keys = [members[j] for j in range(nr) if leader - k < j <= i]
        else:
            leader = min((i // s) * s + s // 2, nr - 1)
            first = leader - k // 2  # k // 2 before the centre, k - k // 2 - 1 after it
            while first < 0:  # shift the window right, not clip it
                first += 1
            while first + k > nr:  # shift it left
                first -= 1
            keys = members[first:first + k]
        out.append(keys)
    return out


def brute(spatial, ks, st, dil, causal, q_tile, kv_tile):
    rank = len(spatial)
    axes = [brute_axis(spatial[a], ks[a], dil[a], st[a], causal[a]) for a in range(rank)]
    strides = [math.prod(spatial[a + 1:]) for a in range(rank)]

    def tile_of(coord, tile):
        if isinstance(tile, int):
            return sum(c * s for c, s in zip(coord, strides)) // tile
        return tuple(c // t for c, t in zip(coord, tile))

    tokens = list(itertools.product(*[range(n) for n in spatial]))
    q_size = Counter(tile_of(t, q_tile) for t in tokens)
    k_size = Counter(tile_of(t, kv_tile) for t in tokens)
    visited = {qt: set() for qt in q_size}
    attended = 0
    for tok in tokens:
        nb = list(itertools.product(*[axes[a][tok[a]] for a in range(rank)]))
        attended += len(nb)
        vs = visited[tile_of(tok, q_tile)]
        for key in nb:
            vs.add(tile_of(key, kv_tile))
    cells = sum(q_size[qt] * k_size[kt] for qt, ks_ in visited.items() for kt in ks_)
    n_vis = sum(len(v) for v in visited.values())
    L = len(tokens)
    return {
        "num_q_tiles": len(q_size),
        "num_kv_tiles": len(k_size),
        "dense_kv_tiles": len(q_size) * len(k_size),
        "visited_kv_tiles": n_vis,
        "attended_pairs": attended,
        "visited_pairs": cells,
        "perfectly_block_sparse": cells == attended,
        "flop_speedup": L * L / attended,
        "speedup_bound": len(q_size) * len(k_size) / n_vis,
    }


def check(spatial, ks, st, dil, causal, q_tile, kv_tile):
    got = gna.speedup_bound(spatial, ks, st, dil, causal, q_tile=q_tile, kv_tile=kv_tile)
    want = brute(spatial, ks, st, dil, causal, q_tile, kv_tile)
    for key, val in want.items():
        assert got[key] == pytest.approx(val, rel=1e-12) if isinstance(val, float) else got[key] == val, (
            f"{key}: got {got[key]}, brute force {val} for spatial={spatial} kernel_size={ks} stride={st} "
            f"dilation={dil} causal={causal} q_tile={q_tile} kv_tile={kv_tile}")


def random_config(rng, rank):
    max_n = {1: 26, 2: 9, 3: 6}[rank]
    spatial, ks, st, dil, causal = [], [], [], [], []
    for _ in range(rank):
        n = rng.randint(1, max_n)
        d = rng.randint(1, min(4, n))
        k = rng.randint(1, n // d)
        s = rng.randint(1, k)
        spatial.append(n), ks.append(k), st.append(s), dil.append(d), causal.append(rng.random() < 0.3)
    return tuple(spatial), tuple(ks), tuple(st), tuple(dil), tuple(causal)


# ----------------------------------------------------------------------------------------------
# exactness
# ----------------------------------------------------------------------------------------------
def test_brute_axis_examples():
    # the brute force itself, on hand-checked windows
    assert brute_axis(7, 3, 1, 1, False) == [[0, 1, 2], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6], [4, 5, 6]]
    assert brute_axis(6, 4, 1, 1, False)[3] == [1, 2, 3, 4]  # even: 2 before, 1 after
    assert brute_axis(5, 3, 1, 1, True) == [[0], [0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4]]
    assert brute_axis(8, 4, 1, 4, False) == [[0, 1, 2, 3]] * 4 + [[4, 5, 6, 7]] * 4  # blocked
    assert brute_axis(7, 2, 3, 1, False)[2] == [2, 5]  # group {2, 5}
    assert brute_axis(7, 2, 3, 1, False)[6] == [3, 6]  # group {0, 3, 6}: 2 keys ending at 6


@pytest.mark.parametrize("rank,count", [(1, 60), (2, 40), (3, 25)])
def test_random_configs_match_brute_force(rank, count):
    rng = random.Random(1234 + rank)
    for _ in range(count):
        spatial, ks, st, dil, causal = random_config(rng, rank)
        L = math.prod(spatial)
        q_md = tuple(rng.randint(1, n + 1) for n in spatial)
        kv_md = tuple(rng.randint(1, n + 1) for n in spatial)
        check(spatial, ks, st, dil, causal, q_md, kv_md)
        check(spatial, ks, st, dil, causal, rng.randint(1, L + 3), rng.randint(1, L + 3))


@pytest.mark.parametrize("case", [
    # 1-D: dilation with n % d != 0, even kernels, stride, causal
    ((10,), (3,), (1,), (3,), (False,)),
    ((11,), (4,), (2,), (2,), (False,)),
    ((13,), (4,), (3,), (3,), (True,)),
    ((16,), (6,), (6,), (1,), (False,)),
    ((16,), (6,), (5,), (1,), (True,)),
    # 2-D
    ((7, 9), (4, 3), (2, 3), (1, 3), (False, True)),
    ((8, 8), (4, 4), (4, 4), (2, 1), (True, False)),
    # 3-D
    ((4, 6, 5), (2, 3, 4), (1, 3, 2), (2, 2, 1), (False, True, False)),
    ((6, 4, 6), (3, 2, 2), (2, 2, 1), (2, 1, 3), (True, True, False)),
])
def test_edge_configs_match_brute_force(case):
    spatial, ks, st, dil, causal = case
    rank = len(spatial)
    for q_tile, kv_tile in [((2,) * rank, (3,) * rank), ((1,) * rank, (1,) * rank),
                            (tuple(spatial), (2,) * rank), (4, 3), (1, 7), (5, 1)]:
        check(spatial, ks, st, dil, causal, q_tile, kv_tile)


def test_flat_dilation_wider_than_kv_tile():
    # dilation d > kv tile: keys d apart may skip whole tiles (exercised exactly)
    check((3, 17), (2, 3), (1, 2), (1, 5), (False, False), 4, 2)
    check((23,), (4,), (3,), (5,), (False,), 3, 2)
    check((5, 14), (3, 2), (2, 1), (1, 6), (True, False), 6, 4)


# ----------------------------------------------------------------------------------------------
# the GNA paper's setting
# ----------------------------------------------------------------------------------------------
def test_blocked_attention_with_matching_tiles_is_perfectly_block_sparse():
    r = gna.speedup_bound((16, 64, 64), (8, 16, 16), stride=(8, 16, 16), q_tile=(8, 4, 4), kv_tile=(8, 4, 4))
    assert r["perfectly_block_sparse"] is True
    assert r["speedup_bound"] == 32.0 and r["flop_speedup"] == 32.0
    assert r["num_q_tiles"] == r["num_kv_tiles"] == 512
    assert r["visited_kv_tiles"] == 512 * 16
    assert r["attended_pairs"] == 65536 * 2048 == r["visited_pairs"]
    assert r["tile_utilization"] == 1.0
    # blocks of (8,16,16) are whole multiples of these tiles too
    for q, kv in [((4, 4, 8), (4, 4, 8)), ((2, 8, 8), (8, 4, 4)), ((8, 16, 1), (1, 16, 8))]:
        r = gna.speedup_bound((16, 64, 64), (8, 16, 16), stride=(8, 16, 16), q_tile=q, kv_tile=kv)
        assert r["perfectly_block_sparse"] and r["speedup_bound"] == 32.0, (q, kv)
    # tiles that straddle block borders are not
    r = gna.speedup_bound((16, 64, 64), (8, 16, 16), stride=(8, 16, 16), q_tile=(16, 4, 2), kv_tile=(16, 4, 2))
    assert not r["perfectly_block_sparse"] and r["speedup_bound"] < 32.0


def test_flat_tiles_on_blocked_attention():
    # flat 128 tokens = 2 rows of 64: a q tile spans 4 blocks along the last axis, so each visited
    # 128 x 128 tile pair is a quarter used: bound 8 against 32 FLOPs
    r = gna.speedup_bound((16, 64, 64), (8, 16, 16), stride=(8, 16, 16), q_tile=128, kv_tile=128)
    assert r["tile_kind"] == "flat"
    assert r["flop_speedup"] == 32.0 and r["speedup_bound"] == 8.0
    assert not r["perfectly_block_sparse"] and r["tile_utilization"] == 0.25


def test_sliding_window_is_not_perfectly_block_sparse():
    r = gna.speedup_bound((16, 64, 64), (8, 16, 16))
    assert r["q_tile"] == r["kv_tile"] == (4, 4, 8)
    assert not r["perfectly_block_sparse"]
    assert 1.0 < r["speedup_bound"] < r["flop_speedup"] == 32.0
    r1 = gna.speedup_bound((64,), (9,), q_tile=(8,), kv_tile=(8,))
    assert not r1["perfectly_block_sparse"]


def test_defaults_and_fields():
    assert gna.speedup_bound((300,), 5)["q_tile"] == (128,)
    assert gna.speedup_bound((4, 100), 3)["kv_tile"] == (4, 8)  # (16, 8) clipped to the axes
    assert gna.speedup_bound((2, 3, 64), 1)["q_tile"] == (2, 3, 8)
    r = gna.speedup_bound((20, 20), 5, q_tile=64)
    assert r["kv_tile"] == 128 and r["tile_kind"] == "flat"
    for key in ("dense_kv_tiles", "visited_kv_tiles", "flop_speedup", "speedup_bound", "perfectly_block_sparse",
                "num_q_tiles", "num_kv_tiles", "attended_pairs", "q_tile", "kv_tile"):
        assert key in r


def test_fast_on_large_grids():
    t0 = time.perf_counter()
    r = gna.speedup_bound((16, 64, 64), (8, 16, 16), q_tile=128, kv_tile=128)
    r2 = gna.speedup_bound((16, 64, 64), (8, 16, 16), dilation=(1, 3, 2), stride=(2, 4, 8), is_causal=(True, False, False),
                           q_tile=128, kv_tile=64)
    r3 = gna.speedup_bound((16, 64, 64), (8, 16, 16), q_tile=(4, 4, 8), kv_tile=(2, 4, 8))
    assert time.perf_counter() - t0 < 5.0
    assert r["visited_kv_tiles"] <= r["dense_kv_tiles"] and r2["visited_kv_tiles"] <= r2["dense_kv_tiles"]
    assert r3["flop_speedup"] == 32.0


def test_best_tiles():
    for rank in (1, 2, 3):
        for q, kv in gna.SUPPORTED_TILES[rank]:
            assert len(q) == len(kv) == rank and math.prod(q) == 128 and math.prod(kv) in (64, 128)
            assert all(t & (t - 1) == 0 for t in q + kv)
    best = gna.best_tiles((16, 64, 64), (8, 16, 16), stride=(8, 16, 16), top=4)
    assert len(best) == 4
    for q, kv, r in best:
        assert (q, kv) in gna.SUPPORTED_TILES[3]
        assert r["speedup_bound"] == 32.0 and r["perfectly_block_sparse"]
    best = gna.best_tiles((8, 40, 40), (4, 9, 9), is_causal=(True, False, False), top=6)
    bounds = [r["speedup_bound"] for _, _, r in best]
    assert bounds == sorted(bounds, reverse=True)
    assert all(q[0] <= 8 and kv[0] <= 8 for q, kv, _ in best)
    everything = [gna.speedup_bound((8, 40, 40), (4, 9, 9), is_causal=(True, False, False), q_tile=q, kv_tile=kv)
                  ["speedup_bound"] for q, kv in gna.SUPPORTED_TILES[3] if q[0] <= 8 and kv[0] <= 8]
    assert bounds[0] == max(everything)
    assert gna.best_tiles((4, 4, 4), 3) == []  # no 128-token box fits inside 4x4x4 (64 tokens)
    assert len(gna.best_tiles((4096,), 64, top=3)) == 2  # kv 128 and 64


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,name", [
    (dict(spatial=(8, 8), kernel_size=9), "kernel_size"),
    (dict(spatial=(8, 8), kernel_size=(3, 5), dilation=(1, 2)), "kernel_size"),
    (dict(spatial=(8, 8), kernel_size=(3, 3, 3)), "kernel_size"),
    (dict(spatial=(8, 8), kernel_size=0), "kernel_size"),
    (dict(spatial=(8, 8), kernel_size=3, stride=4), "stride"),
    (dict(spatial=(8, 8), kernel_size=3, stride=(1,)), "stride"),
    (dict(spatial=(8, 8), kernel_size=3, dilation=0), "dilation"),
    (dict(spatial=(8, 8), kernel_size=3, is_causal=2), "is_causal"),
    (dict(spatial=(8, 8, 8, 8), kernel_size=3), "spatial"),
    (dict(spatial=(8, 0), kernel_size=1), "spatial"),
    (dict(spatial=(8, 8), kernel_size=3, q_tile=(4, 0)), "q_tile"),
    (dict(spatial=(8, 8), kernel_size=3, q_tile=(4, 4, 4)), "q_tile"),
    (dict(spatial=(8, 8), kernel_size=3, kv_tile=-1), "kv_tile"),
    (dict(spatial=(8, 8), kernel_size=3, q_tile=16, kv_tile=(4, 4)), "kv_tile"),
])
def test_bad_input_names_the_argument(kwargs, name):
    with pytest.raises(ValueError) as e:
        gna.speedup_bound(**kwargs)
    assert re.search(rf"'{name}'", str(e.value)), str(e.value)
    assert "allowed" in str(e.value)


def test_best_tiles_bad_input():
    with pytest.raises(ValueError, match="'top'"):
        gna.best_tiles((16, 16), 3, top=0)
    with pytest.raises(ValueError, match="'stride'"):
        gna.best_tiles((16, 16), 3, stride=5)


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def run_main(args):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = gna.main(args)
    return rc, out.getvalue(), err.getvalue()


def test_cli():
    rc, out, _ = run_main(["--spatial", "16", "64", "64", "--kernel-size", "8", "16", "16", "--stride", "8", "16", "16",
                           "--q-tile", "8", "4", "4", "--kv-tile", "8", "4", "4"])
    assert rc == 0 and "32.000x" in out and "perfectly block-sparse: yes" in out
    rc, out, _ = run_main(["--spatial", "16", "64", "64", "--kernel-size", "8", "16", "16", "--causal", "0", "1", "1",
                           "--q-tile", "128", "--kv-tile", "64", "--best", "--top", "3"])
    assert rc == 0 and "(flat)" in out and "best tiles" in out
    rc, out, _ = run_main(["--spatial", "32", "32", "--kernel-size", "7", "--dilation", "2", "--best", "--json"])
    assert rc == 0
    data = json.loads(out)
    assert data["result"]["kernel_size"] == [7, 7] and len(data["best"]) == 5
    rc, _, err = run_main(["--spatial", "8", "--kernel-size", "9"])
    assert rc == 2 and "kernel_size" in err


def test_cli_through_attnx_command():
    from attnx.cli import main as attnx_main
    out = io.StringIO()
    with redirect_stdout(out):
        rc = attnx_main(["gna-sim", "--spatial", "64", "--kernel-size", "8"])
    assert rc == 0 and "speedup bound" in out.getvalue()
