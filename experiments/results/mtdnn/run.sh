#!/usr/bin/env bash
# Single-task fine-tuning vs MT-DNN multi-task fine-tuning vs multi-task then per-task refinement,
# on SST-2 (a 4,000-example subset), MRPC and RTE (full training sets), 3 seeds per arm, then the
# report's paired statistics. Question: does training the tasks together on one shared encoder
# (MT-DNN, Liu et al. 2019; proportional task sampling), with or without per-task fine-tuning
# afterwards, beat fine-tuning each task alone from the same pre-trained weights?
# Backbone: a clozelab run that has learned some language (L2/H128, 8,192-entry WordPiece, seq 64,
# val/ref_mlm_acc 0.246 after 24M tokens of the study corpus), made by
#   bash /work/studies/pilot/run.sh D_v8k_seq64_b64_lr1e-3 tokenizer.vocab_size=8192 \
#        data.max_seq_length=64 data.batch_size=64 optim.lr=1e-3 trainer.max_tokens=24000000
# (that is: clozelab pretrain experiment=study_cpu seed=1 eval.suite=null logger=csv plus those overrides).
# Command (from the repository root, with ../shared/data; RUN: a copy of that run directory):
#   nice -n 10 bash experiments/results/mtdnn/run.sh RUN /tmp/mtdnn ../shared/data
set -euo pipefail
RUN=${1:?the pre-trained run directory}
OUT=${2:-/tmp/mtdnn}
DATA=${3:-../shared/data}
PY=${PY:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} WANDB_MODE=offline
COMMON=(checkpoint="$RUN" data_dir="$DATA" 'eval_dir=${paths.output_dir}/eval'
        'multitask.tasks=[sst2,mrpc,rte]'
        'multitask.common={max_seq_length: 64, epochs: 3, lr: 2e-4, batch_size: 32}'
        'multitask.overrides={sst2: {max_train_examples: 4000}}'
        multitask.epochs=3 multitask.lr=2e-4 multitask.batch_size=32 multitask.save=false
        'seeds=[1],[2],[3]' +sweep_meta.seed_key=seeds)
# the jobs of a sweep run side by side (3 processes, one thread each)
LAUNCHER=(hydra/launcher=joblib hydra.launcher.n_jobs=${JOBS:-3})
start=$(date +%s)
# arms 1-2: each task alone (the baseline) and the three together (MT-DNN's multi-task stage)
$PY -m clozelab finetune -m "${COMMON[@]}" "${LAUNCHER[@]}" multitask.joint=false,true \
    multitask.refine=false hydra.sweep.dir="$OUT/sweep_single_joint"
mid=$(date +%s)
# arm 3: the same multi-task stage, then each task fine-tuned alone from the multi-task weights
# for one epoch (the tasks' own epochs: 1 here, to fit the CPU budget)
$PY -m clozelab finetune -m "${COMMON[@]}" "${LAUNCHER[@]}" multitask.joint=true \
    multitask.refine=true 'multitask.common={max_seq_length: 64, epochs: 1, lr: 2e-4, batch_size: 32}' \
    hydra.sweep.dir="$OUT/sweep_refine"
end=$(date +%s)
$PY -m clozelab report "$OUT/sweep_single_joint" "$OUT/sweep_refine" \
    --baseline multitask.joint=false --out "$OUT/report"
echo "single + joint: $((mid - start)) s, refine: $((end - mid)) s, report: $(($(date +%s) - end)) s"
