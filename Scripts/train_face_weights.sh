#!/usr/bin/env bash
# Train architecture-2 weights (local tokenizers, digit-wise prior) from scratch on the generated
# face cohort and export a bundle, printing held-out metrics. Every stage resumes: run the same
# command again after a kill (or in a later session) and it continues where its checkpoints are.
#
#   --profile gpu   one large GPU: whole pipeline in <= 9 min (cohort in parallel worker processes)
#   --profile cpu   2 shared cores: one thread, nice 15, stage budgets of hours (across resumes)
# Bash reads a script while running it: for long runs, run a copy (cp it outside the repo first).
#   --profile tiny  seconds: the CPU smoke test of this script (never ship its weights)
#
# usage: Scripts/train_face_weights.sh [--profile gpu|cpu|tiny] [--work DIR] [--out BUNDLE]
#            [--resolution 128] [--cohort-seed 10] [--eval-seed 11] [--subjects N] [--tok-subjects N]
#            [--init-from BUNDLE] [--minutes BRAIN,NONBRAIN,PRIOR]
# --minutes: override the profile's stage budgets (totals across resumes; a budget lowered on
# resume ends that stage sooner with its learning rate decayed over the new total).
# --init-from: a committed architecture-2 bundle whose weights start every stage that has no
# checkpoint yet (a replaced machine keeps only the repository).
# The cohort seed is recorded in the bundle manifest (data.cohort_seeds); the audit refuses a
# cohort with that seed, and --eval-seed (held-out metrics) must differ from it.
set -euo pipefail
cd "${CPMAE_REPO:-$(dirname "$0")/..}"  # CPMAE_REPO: the checkout, when running a copy of this script

PROFILE=gpu
WORK=/work/runs/face-weights
OUT=""
RES=128
COHORT_SEED=10
EVAL_SEED=11
SUBJECTS=""
TOK_SUBJECTS=""
INIT=()
MINUTES=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --profile) PROFILE="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --resolution) RES="$2"; shift 2 ;;
    --cohort-seed) COHORT_SEED="$2"; shift 2 ;;
    --eval-seed) EVAL_SEED="$2"; shift 2 ;;
    --subjects) SUBJECTS="$2"; shift 2 ;;
    --tok-subjects) TOK_SUBJECTS="$2"; shift 2 ;;
    --init-from) INIT=(--set "init_from=$2"); shift 2 ;;
    --minutes) MINUTES="$2"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[[ "$COHORT_SEED" != "$EVAL_SEED" ]] || { echo "--eval-seed must differ from --cohort-seed" >&2; exit 2; }

PY=${PYTHON:-python}
[[ -x .venv/bin/python ]] && PY=.venv/bin/python
CPMAE=("$PY" -m cpmae)
NICE=(env)
VAL=4
case "$PROFILE" in
  gpu)  N=${SUBJECTS:-180}; NTOK=${TOK_SUBJECTS:-$N}; WORKERS=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 )); DEV=cuda; THREADS=0
        TOK_B=(--batch-size 8); PRIOR_B=(--batch-size 32)
        MIN_BRAIN=1.0; MIN_NONBRAIN=1.8; MIN_PRIOR=2.8; MIN_BAND=0.4; EVAL_N=4; CKPT=200; ENCODERS=1 ;;
  cpu)  N=${SUBJECTS:-500}; NTOK=${TOK_SUBJECTS:-36}; WORKERS=1; DEV=cpu; THREADS=1; NICE=(nice -n 15)
        export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1  # one core of a shared machine, generation included
        TOK_B=(--batch-size 2); PRIOR_B=(--batch-size 8)
        MIN_BRAIN=60; MIN_NONBRAIN=180; MIN_PRIOR=900; MIN_BAND=30; EVAL_N=6; CKPT=100; ENCODERS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc) ;;
  tiny) N=${SUBJECTS:-6}; NTOK=${TOK_SUBJECTS:-$N}; VAL=2; WORKERS=2; DEV=cpu; THREADS=1
        TOK_B=(--batch-size 2 --set model.channels=[4,8] --set model.blocks=[1,1]); PRIOR_B=(--batch-size 8 --set micro_batch=4
        --set model.channels=[8,16] --set model.blocks=1 --set model.head_channels=4 --set model.embed_dim=2)
        MIN_BRAIN=0.15; MIN_NONBRAIN=0.15; MIN_PRIOR=0.2; MIN_BAND=0.1; EVAL_N=1; CKPT=5; ENCODERS=2 ;;
  *) echo "--profile must be gpu, cpu or tiny" >&2; exit 2 ;;
esac
if [[ -n "$MINUTES" ]]; then
  IFS=, read -r MIN_BRAIN MIN_NONBRAIN MIN_PRIOR <<< "$MINUTES"
  [[ -n "$MIN_PRIOR" ]] || { echo "--minutes needs three budgets: BRAIN,NONBRAIN,PRIOR" >&2; exit 2; }
fi
OUT=${OUT:-$WORK/bundle-$RES}
NTRAIN=$(( N - VAL ))  # prior: subjects 0..N-VAL-1 train, the last VAL are held out
NTOK_TRAIN=$(( NTOK - VAL ))  # tokenizers learn from fewer subjects (a probe reached 30 dB from 20)
mkdir -p "$WORK"
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }

# Stage budgets are totals across resumes (budget_schedule): the lr decays over the whole budget.
COMMON=(--device "$DEV" --threads "$THREADS" --precision auto --val-subjects "$VAL"
        --checkpoint-every "$CKPT" --log-every 10 --set budget_schedule=true --set cohort_seed="$COHORT_SEED"
        --steps 10000000 --progress none ${INIT[@]+"${INIT[@]}"})

prefill() {  # generate subjects 0..$1-1 into the disk cache (skips those already there)
  stamp "cohort: $1 subjects, seed $COHORT_SEED, ${RES}³, $WORKERS worker(s)"
  "${NICE[@]}" "$PY" -c "from cpmae.train.data import prefill_cohort; \
print('generated', prefill_cohort($RES, $COHORT_SEED, $1, $WORKERS), 'new subjects')"
}
prefill "$NTOK"

run_stage() {  # name, then the cpmae train arguments; skipped once DONE is written
  local name=$1; shift
  local dir="$WORK/$name"
  if [[ -f "$dir/DONE" ]]; then stamp "$name: done earlier"; return; fi
  stamp "$name"
  # --resume continues from the latest checkpoint (or starts when there is none); the same
  # arguments every time, so a resumed run keeps its saved config
  "${NICE[@]}" "${CPMAE[@]}" train "$@" --out "$dir" --resume
  touch "$dir/DONE"
}

# the non-brain tokenizer first: it carries the face (its round trip is the first gate)
run_stage tokenizer-nonbrain tokenizer --part nonbrain --resolution "$RES" --max-minutes "$MIN_NONBRAIN" \
  --cohort-size "$NTOK_TRAIN" --val-every 500 "${TOK_B[@]}" "${COMMON[@]}"
run_stage tokenizer-brain tokenizer --part brain --resolution "$RES" --max-minutes "$MIN_BRAIN" \
  --cohort-size "$NTOK_TRAIN" --val-every 500 "${TOK_B[@]}" "${COMMON[@]}"
prefill "$N"

# token pairs and the prior trained on them are kept per face-shape-map rule (cpmae.conditions):
# a work folder from an earlier rule keeps its tokenizers and re-encodes beside the old pairs
SHAPE_V=$("$PY" -c "from cpmae.conditions import SHAPE_MAPS_VERSION as v; print(v)")
TOKENS="$WORK/tokens-v$SHAPE_V"; PRIOR="prior-v$SHAPE_V"
if [[ ! -f "$TOKENS/manifest.json" ]]; then
  # ENCODERS processes side by side (one thread each on CPU), then one pass that finds every pair
  # written and writes the manifest; a killed encode resumes from the pairs already written
  stamp "encode $N subjects ($ENCODERS process(es))"
  ENC=(encode --out "$TOKENS" --brain-tokenizer "$WORK/tokenizer-brain" --nonbrain-tokenizer
       "$WORK/tokenizer-nonbrain" --count "$N" --cohort-seed "$COHORT_SEED" --resolution "$RES" --device "$DEV"
       --progress none)
  pids=()
  for (( k = 0; k < ENCODERS; k++ )); do
    "${NICE[@]}" "${CPMAE[@]}" "${ENC[@]}" --shard "$k/$ENCODERS" & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  "${NICE[@]}" "${CPMAE[@]}" "${ENC[@]}"
fi

# the face-shape condition when the cohort has faces (the token pairs then carry shape maps)
SHAPE=()
if "$PY" -c "import json,sys; sys.exit(0 if json.load(open('$TOKENS/manifest.json')).get('shape_maps') else 1)"; then
  SHAPE=(--set model.shape_channels=2)
fi
run_stage "$PRIOR" prior --resolution "$RES" --data "$TOKENS" --max-minutes "$MIN_PRIOR" --cohort-size "$NTRAIN" \
  --val-every 1000 "${PRIOR_B[@]}" ${SHAPE[@]+"${SHAPE[@]}"} "${COMMON[@]}"

stamp "export $OUT"
"${CPMAE[@]}" export "$WORK/tokenizer-brain" "$WORK/tokenizer-nonbrain" "$WORK/$PRIOR" --out "$OUT" \
  --note "architecture 2, profile $PROFILE: generated face cohort seed $COHORT_SEED ($NTRAIN training subjects)"

# the non-brain decoder alone, again, with extra weight on the 8 mm around the brain that deepbet and
# tissue classes read in an output (docs/training.md, "Seventh look"); the encoder is frozen, so the
# tokens and the prior stay valid, and the bundle keeps its other parts (export --base)
run_stage tokenizer-nonbrain-band tokenizer --part nonbrain --resolution "$RES" --max-minutes "$MIN_BAND" \
  --cohort-size "$NTOK_TRAIN" --val-every 500 "${TOK_B[@]}" "${COMMON[@]}" --lr 0.0003 --warmup-steps 20 \
  --set init_from="$OUT" --set freeze_encoder=true --set band_weight=8 --set band_voxels=4 --set band_bias=0.6
"${CPMAE[@]}" export "$WORK/tokenizer-nonbrain-band" --base "$OUT" --out "$OUT"
stamp "held-out metrics (cohort seed $EVAL_SEED, never trained on)"
"${NICE[@]}" "$PY" -m cpmae.train.evaluate --weights "$OUT" --resolution "$RES" --cohort-seed "$EVAL_SEED" \
  --count "$EVAL_N" --device "$DEV" | "$PY" -c "import json,sys; d=json.load(sys.stdin); print(json.dumps(d['summary']))"
stamp "done"
