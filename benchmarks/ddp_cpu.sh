#!/bin/bash
# 1 vs 2 CPU processes (gloo DDP) of train_net.py on a tiny shapes model, 40 iterations each,
# interleaved; prints detectron2's "Overall training speed" line of each run. Asserts nothing.
#   bash benchmarks/ddp_cpu.sh [REPEATS]
#   REPO=/tmp/old bash benchmarks/ddp_cpu.sh   # the same runs with another checkout's code
#                                              # (e.g. git worktree add /tmp/old 44a4af3)
set -u
HERE=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$HERE/.venv/bin/python}
cd "${REPO:-$HERE}"
export PYTHONPATH=$PWD  # that checkout's maskformer_d2
TINY="DATASETS.SHAPES.NUM_TRAIN 48 DATASETS.SHAPES.NUM_VAL 6 SOLVER.IMS_PER_BATCH 4 MODEL.MASK_FORMER.HIDDEN_DIM 64
MODEL.SEM_SEG_HEAD.CONVS_DIM 64 MODEL.SEM_SEG_HEAD.MASK_DIM 64 MODEL.MASK_FORMER.DIM_FEEDFORWARD 128
DATALOADER.NUM_WORKERS 0 SOLVER.CHECKPOINT_PERIOD 1000 DATASETS.TEST () TEST.EVAL_PERIOD 0 SOLVER.MAX_ITER 40
MODEL.RESNETS.NORM GN"
OUT=$(mktemp -d)
for _ in $(seq "${1:-2}"); do
  for n in 1 2; do
    $PY train_net.py --config-file configs/shapes/maskformer_R18_shapes.yaml --num-gpus $n $TINY \
      OUTPUT_DIR "$OUT/$n" >"$OUT/$n.log" 2>&1
    echo "$n processes: $(grep -o 'Overall training speed.*' "$OUT/$n/log.txt" | head -1)"
    rm -rf "${OUT:?}/$n"
  done
done
