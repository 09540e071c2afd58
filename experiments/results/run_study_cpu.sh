#!/usr/bin/env bash
# The CPU study of issue 17 as one background process: masking rate (80/10/10 at 15/40%, two
# jobs at a time), then mask-only at 40% beside SEGMENT-PAIR+NSP (one job each, side by side);
# 3 pre-training seeds, experiments/study_cpu.yaml's protocol (~4 hours of 2 cores). Each sweep skips finished jobs, so a second launch
# resumes where an interrupted one stopped. Timings of each launch go to STUDIES/times.txt.
#   nice -n 19 bash experiments/results/run_study_cpu.sh STUDIES [SHARED_DATA] &
# Then: clozelab report STUDIES/masking_rate_cpu STUDIES/masking_rate_cpu_mask_only --out ...
#       clozelab report STUDIES/nsp_ablation_cpu STUDIES/masking_rate_cpu --only corruption.rate=0.15 --out ...
set -u
studies=$(realpath -m "${1:?usage: run_study_cpu.sh STUDIES_DIR [SHARED_DATA_DIR]}")
shared=$(realpath "${2:-../shared/data}")
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$studies"
export WANDB_MODE=offline OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export CLOZELAB_STUDY_CORPUS="$studies/corpus" CLOZELAB_DATA_DIR="$shared"
py=${PYTHON:-python}
[ -d "$studies/corpus" ] || "$py" "$here/pretrain_vs_none/build_corpus.py" "$studies/corpus" "$shared"
launch() {  # NAME N_JOBS OVERRIDES...
    local name=$1 n_jobs=$2 start
    shift 2
    start=$(date +%s)
    "$py" -m clozelab pretrain "$@" hydra/launcher=joblib "hydra.launcher.n_jobs=$n_jobs" \
        "hydra.sweep.dir=$studies/$name"
    echo "$name rc=$? wall_s=$(($(date +%s) - start)) $(date -u +%FT%TZ)" >> "$studies/times.txt"
}
launch masking_rate_cpu 2 sweep=masking_rate_cpu
launch masking_rate_cpu_mask_only 1 sweep=masking_rate_cpu setting=ops_mask_only corruption.rate=0.4 &
launch nsp_ablation_cpu 1 sweep=nsp_ablation_cpu
wait
