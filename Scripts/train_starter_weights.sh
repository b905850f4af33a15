#!/usr/bin/env bash
# Train and export the demonstration ("starter") weights that ship in cpmae/weights/demo-128 and
# demo-256, with the project's own training commands, within a fixed wall-time budget.
#
# For each grid: brain tokenizer, non-brain tokenizer (both on crops of generated subjects),
# then the prior on token pairs encoded on the fly by those two tokenizers, then `cpmae export`.
# Each stage gets a share of --minutes and stops cleanly when it is spent (the learning rate
# decays over the budget: budget_schedule), so the whole run fits the budget on any machine;
# more minutes (or a GPU) give better weights. These are DEMONSTRATION weights, not a clinical
# model: the training data are subjects generated from two heads (see docs/training.md).
#
# usage: Scripts/train_starter_weights.sh [--minutes 40] [--resolutions "128 256"] [--work DIR]
#            [--weights-root DIR] [--device auto] [--seed 0] [--cohort-seed 0]
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=40
RESOLUTIONS="128 256"
WORK=out/starter-training
WEIGHTS_ROOT=CPMAEDeidentify/cpmae/weights
DEVICE=auto
SEED=0
COHORT_SEED=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --minutes) MINUTES="$2"; shift 2 ;;
    --resolutions) RESOLUTIONS="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    --weights-root) WEIGHTS_ROOT="$2"; shift 2 ;;
    --device) DEVICE="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    --cohort-seed) COHORT_SEED="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

CPMAE=${CPMAE:-.venv/bin/cpmae}
[[ -x "$CPMAE" ]] || CPMAE=cpmae
n_res=$(wc -w <<<"$RESOLUTIONS")
# share of the budget per stage: tokenizers 30 % each, prior 40 % (per grid)
stage_minutes() { awk -v m="$MINUTES" -v n="$n_res" -v s="$1" 'BEGIN { printf "%.3f", m / n * s }'; }
TOK_MIN=$(stage_minutes 0.30)
PRIOR_MIN=$(stage_minutes 0.40)

# Settings that make a few CPU minutes useful: small crops, few subjects reused for several
# crops each (a 256³ subject takes ~15 s to generate; they are cached on disk), short warm-up.
COMMON=(--device "$DEVICE" --seed "$SEED" --steps 100000 --warmup-steps 10 --val-subjects 1
        --checkpoint-every 50 --log-every 1 --set budget_schedule=true --set cohort_seed="$COHORT_SEED")

mkdir -p "$WORK"
start=$(date +%s)
for RES in $RESOLUTIONS; do
  case "$RES" in
    128) COHORT=16; CROP=64 ;;
    256) COHORT=8; CROP=64 ;;
    *) echo "resolution must be 128 or 256" >&2; exit 2 ;;
  esac
  RUN="$WORK/$RES"
  for PART in brain nonbrain; do
    echo "== $RES³ $PART tokenizer ($TOK_MIN min)"
    "$CPMAE" train tokenizer --part "$PART" --resolution "$RES" --out "$RUN/tokenizer-$PART" --resume \
      --max-minutes "$TOK_MIN" --crop "$CROP" --cohort-size "$COHORT" --lr 0.001 --val-every 100 \
      --set samples_per_subject=4 --set cache_subjects=2 "${COMMON[@]}"
  done
  echo "== $RES³ prior ($PRIOR_MIN min)"
  "$CPMAE" train prior --resolution "$RES" --out "$RUN/prior" --resume --max-minutes "$PRIOR_MIN" \
    --brain-tokenizer "$RUN/tokenizer-brain" --nonbrain-tokenizer "$RUN/tokenizer-nonbrain" \
    --cohort-size "$COHORT" --batch-size 1 --lr 0.001 --val-every 200 --set token_crop=16 \
    --set samples_per_subject=1 "${COMMON[@]}"
  echo "== export demo-$RES"
  "$CPMAE" export "$RUN/tokenizer-brain" "$RUN/tokenizer-nonbrain" "$RUN/prior" --out "$WEIGHTS_ROOT/demo-$RES" \
    --note "demonstration weights: trained for about $MINUTES CPU minutes in total (all grids) on subjects generated from two heads; not a clinical model"
done
echo "== done in $(( $(date +%s) - start )) s; weights in $WEIGHTS_ROOT/demo-{$(tr ' ' , <<<"$RESOLUTIONS")}"
du -ch "$WEIGHTS_ROOT"/demo-*/*.safetensors | tail -1
