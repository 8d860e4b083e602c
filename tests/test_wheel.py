"""The wheel users install: build it, check its contents, install it into a fresh virtual
environment away from the source tree, and use it there (CPU reference path, opcheck, CLI).

Builds reuse the native build folder (build/native), so after `pip install .` this takes seconds.
Opt-in (it builds and installs): ATTNX_TEST_WHEEL=1 (CI sets it). ATTNX_WHEEL=path tests a
prebuilt wheel instead of building one.
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(os.environ.get("ATTNX_TEST_WHEEL") != "1" and not os.environ.get("ATTNX_WHEEL"),
                                reason="opt-in: ATTNX_TEST_WHEEL=1 (builds a wheel) or ATTNX_WHEEL=path")
MAX_WHEEL_BYTES = 64 << 20


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    if os.environ.get("ATTNX_WHEEL"):
        return os.environ["ATTNX_WHEEL"]
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", str(out),
                    ROOT], check=True, cwd=ROOT)
    (path,) = glob.glob(str(out / "attnx-*.whl"))
    return path


def test_wheel_name_contents_and_metadata(wheel):
    name = os.path.basename(wheel)
    assert name.startswith("attnx-0.1.0-py3-none-linux_"), name  # one wheel for every Python 3 (stable ABI)
    assert os.path.getsize(wheel) < MAX_WHEEL_BYTES
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read("attnx-0.1.0.dist-info/METADATA").decode()
        entry_points = z.read("attnx-0.1.0.dist-info/entry_points.txt").decode()
    stray = [n for n in names if not (n.startswith("attnx/") or n.startswith("attnx-0.1.0.dist-info/"))]
    assert not stray, f"files outside the package: {stray}"
    assert not [n for n in names if n.endswith((".o", ".a", ".cu", ".cuh", ".h", ".pyc")) or "/build/" in n]
    assert "attnx/__init__.py" in names and "attnx/reference/dense_varlen.py" in names
    if os.path.exists(os.path.join(ROOT, "build", "native", "libattnx_ops.so")):
        assert "attnx/libattnx_ops.so" in names, "the native library is missing from the wheel"
    assert "Requires-Dist: torch>=2.11" in meta
    assert "attnx = attnx.cli:main" in entry_points


SMOKE = r"""
import json, os, sys
import torch
import attnx
here = os.path.dirname(attnx.__file__)
assert here.startswith(sys.prefix), (here, sys.prefix)  # the venv's copy, not the source tree
info = attnx.info()
print(json.dumps({"file": attnx.__file__, "native": info["native_library"], "error": info["native_error"],
                  "instances": info["native_instances"]}))
q, k, v = (torch.randn(2, 37, 4, 64, dtype=torch.float64) for _ in range(3))
out = attnx.attention(q, k, v, causal=True)
s = torch.einsum("bqhd,bkhd->bhqk", q, k) / 8.0
s = s.masked_fill(torch.ones(37, 37, dtype=torch.bool).triu(1), float("-inf"))
ref = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v)
assert torch.allclose(out, ref, atol=1e-10), (out - ref).abs().max()
torch.library.opcheck(torch.ops.attnx.attention.default, (q.float(), k.float(), v.float(), True, None))
print("ok")
"""


def test_wheel_installs_and_runs_in_a_fresh_venv(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    # torch comes from this interpreter's installation (a 5 GB download otherwise), appended to the
    # venv's path by a .pth file: the wheel goes into the venv's own site-packages, which come first.
    import torch
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "outer_torch.pth"), "w") as f:
        f.write(os.path.dirname(os.path.dirname(torch.__file__)) + "\n")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", wheel],
                   check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ATTNX_NATIVE_LIB")}
    run = subprocess.run([py, "-c", SMOKE], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stdout + run.stderr
    report = run.stdout.splitlines()[0]
    if os.path.exists(os.path.join(ROOT, "build", "native", "libattnx_ops.so")):
        assert '"native": null' not in report, f"the wheel's native library did not load: {report}"
    cli = subprocess.run([str(venv / "bin" / "attnx"), "info"], cwd=tmp_path, env=env, capture_output=True,
                         text=True)
    assert cli.returncode == 0 and "attention" in cli.stdout, cli.stdout + cli.stderr
