#!/usr/bin/env bash
# The GPU figures, in one go on a CUDA machine (docs/benchmarks.md, "On a GPU"):
#
#     bash bench/gpu.sh DATA_ROOT OUT_DIR
#
# 1. a GPU that PyTorch sees (else exit 1 at once); the machine (nvidia-smi, torch, CUDA); the tests that
#    need a GPU (tests/test_cuda.py: the CUDA graph of the training step); two dry runs (DRY=0 leaves them
#    out) that stop the script if either bench cannot run there: a broken CUDA path costs a minute, not
#    the whole run;
# 2. bench/quality.py --device cuda --minutes MINUTES (default 5) on MODEL (default the best
#    U-Net, unet_hf_silu), scored on the test pairs and on 1,000 held-out CIFAR training images;
#    its metrics.csv comes back too, one row per step;
# 3. bench/run.py --device cuda --quick: samples/s, MFU against the bf16 matmul peak measured
#    in the same rounds, the speed-up over the seed-style loop, evaluation pairs/s, and the
#    times to 22.2 and 30 dB, at batch BATCH (default 64) over ROUNDS rounds (default 5).
#
# Quality runs first: of the two it is the figure a short lease cannot measure again.
# Each step writes its log and JSON into OUT_DIR as it goes (replacing an earlier run's there); PYTHON picks
# the interpreter (default python3), QUALITY_CAP_S and SPEED_CAP_S cap steps 2 and 3 in wall seconds.
set -u -o pipefail
if [ $# -ne 2 ]; then
  echo "usage: bash bench/gpu.sh DATA_ROOT OUT_DIR" >&2
  exit 2
fi
data=$1
out=$2
py=${PYTHON:-python3}
model=${MODEL:-unet_hf_silu}
minutes=${MINUTES:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MIXSEP_DATA_ROOT="$data"
if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "PyTorch sees no GPU here: bench/gpu.sh times only CUDA (bench/run.py and bench/quality.py time the CPU)." >&2
  exit 1
fi
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  nproc
  "$py" -c 'import sys, torch, torchvision, torchmetrics; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "torchvision", torchvision.__version__, "torchmetrics", torchmetrics.__version__, "gpu", torch.cuda.get_device_name(0))'
  "$py" -m mixsep info
} 2>&1 | tee "$out/machine.log"

echo "== tests on the GPU" | tee "$out/tests.log"
if ! timeout "${TESTS_CAP_S:-240}" "$py" -m pytest -q -p no:cacheprovider -o addopts= tests/test_cuda.py >>"$out/tests.log" 2>&1; then
  tail -60 "$out/tests.log"
  echo "the GPU tests failed: stopped before the timed runs" >&2
  exit 1
fi
tail -3 "$out/tests.log"

echo "== dry runs" | tee "$out/dry.log"
if [ "${DRY:-1}" = 0 ]; then
  echo "left out (DRY=0)" | tee -a "$out/dry.log"
elif ! { "$py" bench/run.py --data-root "$data" --device cuda --dry-run \
       && "$py" bench/quality.py --data-root "$data" --device cuda --dry-run --model "$model" \
            --holdout 1000 --runs-dir "$work/dry"; } >>"$out/dry.log" 2>&1; then
  tail -40 "$out/dry.log"
  echo "a dry run failed on this GPU: stopped before the timed runs" >&2
  exit 1
fi
tail -3 "$out/dry.log"

echo "== quality"
timeout "${QUALITY_CAP_S:-345}" "$py" bench/quality.py --data-root "$data" --device cuda --minutes "$minutes" \
  --model "$model" --holdout 1000 --runs-dir "$work/runs" --json "$out/quality-cuda.json" --overwrite ${QUALITY_ARGS:-} 2>&1 \
  | tee "$out/quality.log" | grep -v "^  step"
cp "$work"/runs/*/metrics.csv "$out/quality-metrics.csv" 2>/dev/null
echo "== speed"
timeout "${SPEED_CAP_S:-210}" "$py" bench/run.py --data-root "$data" --device cuda --quick --rounds "${ROUNDS:-5}" --batch "${BATCH:-64}" \
  --quality-model "$model" \
  --json "$out/speed-cuda.json" --overwrite 2>&1 | tee "$out/speed.log" | grep -v "^  unet"

date -u
