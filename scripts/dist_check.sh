#!/usr/bin/env bash
# Multi-GPU check on a machine with 2+ GPUs (device kinds nvidia-h200-x2/-x4): the NCCL cases of
# tests/test_distributed.py, then `attnx bench --distributed` under torchrun on every GPU. Logs under $OUT
# (default ./dist-out). Usage: bash scripts/dist_check.sh [all|test|bench]
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH=$PWD/python
OUT=${OUT:-$PWD/dist-out}; mkdir -p "$OUT"
nvidia-smi topo -m > $OUT/topo.txt 2>&1
nvidia-smi --query-gpu=name,memory.total --format=csv >> $OUT/topo.txt 2>&1
python3 -c 'import torch, attnx; print(torch.__version__, torch.cuda.device_count(), attnx.info()["native_error"])' > $OUT/env.txt 2>&1
MODE=${1:-all}
if [ "$MODE" != bench ]; then
  timeout 400 python3 -m pytest -q tests/test_distributed.py -k nccl > $OUT/test_nccl.txt 2>&1; echo "pytest rc=$?" >> $OUT/test_nccl.txt
  tail -3 $OUT/test_nccl.txt
fi
if [ "$MODE" != test ]; then
  NGPU=$(python3 -c 'import torch; print(torch.cuda.device_count())')
  timeout 400 torchrun --nproc-per-node $NGPU -m attnx bench --distributed --json $OUT/bench_dist.json > $OUT/bench_dist.txt 2>&1; echo "bench rc=$?" >> $OUT/bench_dist.txt
  cat $OUT/bench_dist.txt | tail -30
fi
