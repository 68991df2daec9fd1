#!/usr/bin/env bash
# The GPU rows of the benchmarks and the CUDA tests, in one run on a CUDA machine (benchmarks/README.md):
#   bash benchmarks/gpu_rows.sh [RESULTS_DIR]      # about 5 minutes on one H200
# tests/test_cuda.py needs neither the default text-model package nor torchio; the benchmarks use random
# latents and text. One log and four JSON records go to RESULTS_DIR (default benchmarks/results/gpu).
set -u
out=${1:-benchmarks/results/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
log="$out/gpu_rows.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$log"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$log"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee -a "$log"
# tiny networks: size sweep (training at batch 4) and the generation batch sweep at the demo's size
python3 benchmarks/bench_scaling.py --device cuda --sizes 48x48x32,64x64x32,128x128x64 \
    --batches 1,16,32,64 --batch-size-at 48x48x32 --out "$out/bench_scaling_cuda_tiny.json" 2>&1 | tee -a "$log"
# the paper preset at its own size and batches (1 volume per step, 4 decoder splits)
python3 benchmarks/bench_scaling.py --device cuda --presets paper --sizes 256x256x128 --train-batch 1 --batch 1 \
    --batches "" --reps 2 --out "$out/bench_scaling_cuda_paper.json" 2>&1 | tee -a "$log"
# the paper preset through the real trainer (EMA, clipping, fp16 loss scaling), batch 1 and 4
for batch in 1 4; do
    python3 benchmarks/bench_ddp.py --device cuda --preset paper --nproc 1 --batch "$batch" --steps 10 2>&1 \
        | tee -a "$log"
    cp benchmarks/results/bench_ddp.json "$out/bench_ddp_paper_b$batch.json"
done
