#!/usr/bin/env bash
# What the GPU pack's device call carries (issue 17), made here so that a session lent a GPU only
# runs it: DEST/whl (the packages the device image lacks, as Python 3.12 wheels), DEST/glue (SST-2
# and MRPC train/dev TSVs), DEST/corpus (the study corpus). DEST must be a git-ignored folder of
# the repository (carry takes ignored paths), 64 MiB in all at most. Prints the device command.
#   bash experiments/results/prepare_gpu_pack.sh [DEST=studies] [SHARED_DATA=../shared/data]
# WHEELS_FROM=DIR copies the wheels from DIR instead of downloading them (offline machines).
set -euo pipefail
dest=${1:-studies}
shared=$(realpath "${2:-../shared/data}")
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python}
# the device image (KINDS.md, 2026-11) has torch, Lightning, transformers, scipy, joblib and
# PyYAML, not these; one version each
wheels=(hydra-core==1.3.8 omegaconf==2.3.1 hydra-joblib-launcher==1.2.0 blingfire==0.1.8)
antlr=antlr4-python3-runtime==4.9.3  # an sdist only: built into a wheel here
fail() { echo "prepare_gpu_pack: $*" >&2; exit 2; }

git check-ignore -q "$dest/x" || fail "DEST=$dest is not git-ignored: carry only takes ignored paths. Fix: use studies/ (in .gitignore)"
for task in sst2 mrpc; do
    for split in train dev; do
        [ -f "$shared/$task/$split.tsv" ] || fail "$shared/$task/$split.tsv: missing. Fix: give the folder that holds sst2/ and mrpc/ as SHARED_DATA"
    done
done
mkdir -p "$dest/whl" "$dest/glue"
if [ -n "${WHEELS_FROM:-}" ]; then
    cp "$WHEELS_FROM"/*.whl "$dest/whl/"
elif ! ls "$dest"/whl/antlr4_python3_runtime-*.whl > /dev/null 2>&1; then
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$dest/whl" "${wheels[@]}"
    "$py" -m pip wheel -q --no-deps -w "$dest/whl" "$antlr"
fi
for spec in "${wheels[@]}" "$antlr"; do
    name=${spec%%==*}
    name=${name//-/_}  # a wheel's file name spells the project with underscores
    [ "$(ls "$dest/whl" | grep -c "^$name-")" = 1 ] || fail "$dest/whl: needs exactly one $name wheel"
done
for task in sst2 mrpc; do
    mkdir -p "$dest/glue/$task"
    cp "$shared/$task/train.tsv" "$shared/$task/dev.tsv" "$dest/glue/$task/"
done
[ -d "$dest/corpus" ] || "$py" "$here/pretrain_vs_none/build_corpus.py" "$dest/corpus" "$shared"
mib=$(du -sLm "$dest/whl" "$dest/glue" "$dest/corpus" | awk '{s += $1} END {print s}')
[ "$mib" -le 64 ] || fail "$dest/{whl,glue,corpus} hold ${mib} MiB, over the 64 MiB a device call carries"
cat <<EOF
ready: $dest/whl, $dest/glue, $dest/corpus (${mib} MiB). The device call (carry these three, timeout_s 600):
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $dest/whl/*.whl && export PYTHONPATH=/tmp/site:\$PWD/src PYTHONUNBUFFERED=1 && python3 experiments/gpu_pack.py --corpus $dest/corpus --data-dir $dest/glue --out \$OUT/gpu 2>&1 | tee \$OUT/pack.log
EOF
