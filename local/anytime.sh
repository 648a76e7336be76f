#!/usr/bin/env bash
# Anytime students: quality against depth. After run.sh's stages 1-2 (data, teacher), distils one
# student per way of training for any depth, cuts each to every depth in --depths (export --depth),
# and scores them all with mini-SUPERB (PR, ASR, SID: conf/superb/anytime.yaml), beside each
# depth's real-time factor on this machine (README: Layer dropping); the depths in --espnet-depths
# also go through ESPnet ASR (local/asr/asr.sh, run.sh stage 4's recipe), their WER in the table.
#
#   local/anytime.sh [--expdir exp/anytime] [--depths "3 6 9 12"] [--espnet-depths "3 12"] [--distill-args "..."]
#
#   static           full depth from the start, no dropping; cut after the fact
#   layerdrop        full depth, each layer but the last skipped with p = 0.5 (plain, no reference)
#   dld              full depth, n of N layers per update, pulled towards the full-depth student
#   interleaved_dld  interleaved growth 3 -> 6 -> 9 -> 12, with DLD among the live layers
# Every step keeps what it made: a rerun redoes only what is missing or stale.
set -euo pipefail
cd "$(dirname "$0")/.."

expdir=exp/anytime
datadir=data
teacher=exp/teacher/teacher.pt
preset=tiny
depths="3 6 9 12"
superb_config=conf/superb/anytime.yaml
distill_args=""   # more fairseq-hydra-train overrides for every student, last
espnet_depths=""  # depths whose students also train ESPnet ASR (on their stored features, as stage 4), e.g. "3 6 9 12"
asr_config=conf/asr/tiny_s3prl.yaml  # as run.sh stage 4
inference_config=conf/asr/decode_ctc_greedy.yaml
nbpe=30
asr_train_args=""  # more espnet2.bin.asr_train arguments, e.g. "--max_epoch 1"
nj=2
. utils/parse_options.sh
. ./path.sh
. ./cmd.sh
. local/side_by_side.sh

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (${0##*/}) $*"; }
variants="static layerdrop dld interleaved_dld"
overrides() {
  case $1 in
    static) echo "task.growth.operator=none" ;;
    layerdrop) echo "task.growth.operator=none task.dynamic.mode=bernoulli task.dynamic.reference_weight=0" ;;
    dld) echo "task.growth.operator=none task.dynamic.mode=n_of_n task.dynamic.reference_weight=1" ;;
    interleaved_dld) echo "task.growth.operator=interleaved task.dynamic.mode=n_of_n task.dynamic.reference_weight=1" ;;
  esac
}
expdir=$(realpath -m "${expdir}")
manifests=$(realpath -m "${datadir}/manifests")
teacher=$(realpath -m "${teacher}")
[ -e "${teacher}" ] || { echo "${teacher}: no teacher; run ./run.sh --stage 1 --stop-stage 2 first" >&2; exit 1; }

upstreams=(--upstream "teacher=${expdir}/upstreams/teacher/s3prl.pt")
local/export_upstream.sh "${teacher}" "${expdir}/upstreams/teacher"
for v in ${variants}; do
  run_dir=${expdir}/distill/${v}
  read -r -a opts <<< "$(overrides "${v}") ${distill_args}"
  log "distilling ${v} (conf/distill/${preset}.yaml, $(overrides "${v}")) -> ${run_dir}"
  ${train_cmd} "${run_dir}/train.log" fairseq-hydra-train --config-dir "${MAIN_ROOT}/conf" --config-name "distill/${preset}" \
    task.data="${manifests}" task.teacher_checkpoint="${teacher}" dataset.train_subset=train dataset.valid_subset=dev \
    checkpoint.save_dir="${run_dir}/checkpoints" hydra.run.dir="${run_dir}/hydra" "${opts[@]}"
  python -m local.distill.finalize "${run_dir}/checkpoints/checkpoint_last.pt" "${run_dir}/student.pt"
  for d in ${depths}; do
    local/export_upstream.sh "${run_dir}/student.pt" "${expdir}/upstreams/${v}_depth${d}" --depth "${d}"
    upstreams+=(--upstream "${v}_depth${d}=${expdir}/upstreams/${v}_depth${d}/s3prl.pt")
  done
done
local/export_upstream.sh "${expdir}/distill/static/student.pt" "${expdir}/upstreams/random_init" --random-init
upstreams+=(--upstream "random_init=${expdir}/upstreams/random_init/s3prl.pt")
log "mini-SUPERB (${superb_config}) on every student at every depth -> ${expdir}/superb (log: ${expdir}/superb/log/superb.log)"
# the stores stay where ESPnet trains on them next (gigabytes: each is removed once scored otherwise)
features_opts=()
[ -z "${espnet_depths}" ] || features_opts=(--features-dir "${expdir}/features")
${train_cmd} "${expdir}/superb/log/superb.log" python -m local.superb.run --config "${superb_config}" \
  --datadir "${datadir}" --out "${expdir}/superb" "${features_opts[@]}" --nj "${nj}" "${upstreams[@]}"
asr_opts=()
if [ -n "${espnet_depths}" ]; then
  asr_dir=${expdir}/asr
  tags=()
  for v in ${variants}; do
    for d in ${espnet_depths}; do tags+=("${v}_depth${d}"); done
  done
  # ESPnet's extracted-feature route, as run.sh stage 4 takes on the embedded corpus: the train and
  # test stores are mini-SUPERB's (kept above), dev's is added here.
  store() {
    python -m local.feature_store --upstream "${expdir}/upstreams/$1/s3prl.pt" --data-dir "${datadir}" \
      --splits train dev test --out "${expdir}/features/$1"
  }
  log "hidden states of ${tags[*]} for ESPnet -> ${expdir}/features (logs: ${asr_dir}/log/features)"
  side_by_side "${nj}" "${asr_dir}/log/features" store "${tags[@]}"
  asr() {
    local/asr/asr.sh --tag "$1" --upstream-dir "${expdir}/upstreams/$1" --feats-dir "${expdir}/features/$1" \
      --config "${asr_config}" --inference-config "${inference_config}" --nbpe "${nbpe}" --datadir "${datadir}" \
      --asr-dir "${asr_dir}" --train-args "${asr_train_args}"
  }
  # one thread each, twice as many runs as cores at once (a run is mostly one process's small steps)
  asr_at_once=$(( ${#tags[@]} < 2 * nj ? ${#tags[@]} : 2 * nj ))
  log "ESPnet ASR (${asr_config}) on ${tags[*]}, ${asr_at_once} at a time -> ${asr_dir} (logs: ${asr_dir}/log)"
  side_by_side "${asr_at_once}" "${asr_dir}/log" asr "${tags[@]}"
  exps=()
  for tag in "${tags[@]}"; do
    exps+=("${tag}=${asr_dir}/asr_$(basename "${asr_config}" .yaml)_${tag}_bpe${nbpe}")  # asr.sh's name
  done
  python -m local.asr.report "${asr_dir}" --exps "${exps[@]}" --inference "$(basename "${inference_config}" .yaml)"
  asr_opts=(--asr-results "${asr_dir}/results.md")
fi
python -m local.superb.depth_report --superb "${expdir}/superb" --upstreams "${expdir}/upstreams" \
  --variants "${variants}" --depths "${depths}" --data "${datadir}/test" "${asr_opts[@]}"
