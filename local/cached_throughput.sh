#!/usr/bin/env bash
# What a real training run of a preset delivers from a teacher cache, per depth: fairseq's own
# progress lines (data loading, clipping and logging included), not the benchmark's bare step.
#   1. synthetic data: a HuBERT Base-shaped teacher (random weights) and utterances of 16 s, so
#      every crop of the paper preset is 250,000 samples (one batch shape, like most of LibriSpeech);
#   2. the teacher cache filled once (timed: the teacher's forward in a real fill, disk writes included);
#   3. the preset trained from that cache with its growth 3 -> 6 -> 9 -> 12, once per variant:
#      `eager` (the student alone: targets and input from disk, bf16, torch_adamw) and
#      `cuda_graphs` (the same, every Transformer layer compiled and replayed as CUDA graphs);
#   4. audio-hours per hour at each depth and the EQL speed-up (local/distill/throughput.py).
#
#   local/cached_throughput.sh [--out exp/cached_throughput] [--preset paper] [--ngpu 1]
#       [--updates 96] [--utterances 1024] [--variants "eager cuda_graphs"] [--extra "overrides"]
set -euo pipefail

out=exp/cached_throughput
preset=paper
ngpu=1
updates=96        # 4 depths x 24 updates (EQL)
utterances=1024   # 16 updates of 64 utterances per epoch
variants="eager cuda_graphs"
extra=""          # more hydra overrides for every command (e.g. a smaller batch for a CPU rehearsal)

cd "$(dirname "$0")/.."
. utils/parse_options.sh
. ./path.sh

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (cached_throughput) $*"; }

data=$(realpath -m "${out}/data")
cache=$(realpath -m "${out}/cache")
mkdir -p "${out}"
# valid.tsv is written last: a data dir without it was cut short
[ -f "${data}/valid.tsv" ] || python -m local.distill.synthetic --out "${data}" --utterances "${utterances}" --seconds 16 16.5

read -r -a device_opts <<< "$(python -m local.distill.batch --preset "${preset}" --ngpu "${ngpu}")"
read -r -a extra_opts <<< "${extra}"
# bf16 where there is a GPU. The training runs name the fill's teacher_precision: it is part of
# the cache's fingerprint.
teacher_precision=bf16_weights student_precision=bf16
[ "${ngpu}" -gt 0 ] || teacher_precision=fp32 student_precision=fp32
common=(task.data="${data}" task.teacher_checkpoint="${data}/teacher.pt" dataset.train_subset=train
        dataset.valid_subset=valid "${device_opts[@]}" task.speed.teacher_cache="${cache}"
        task.speed.share_teacher_cnn=true task.speed.teacher_precision="${teacher_precision}"
        task.speed.student_precision="${student_precision}")

audio_hours=$(awk -F'\t' 'FNR > 1 {s += $2} END {printf "%.3f", s / 16000 / 3600}' "${data}/train.tsv" "${data}/valid.tsv")
start=$(date +%s)
fill_opts=()
[ "${ngpu}" -eq 0 ] || fill_opts=(task.speed.compile_teacher=true)
python -m fairseq_plugin.fill_teacher_cache --config-dir "${MAIN_ROOT}/conf/distill" --config-name "${preset}" \
  "${common[@]}" "${fill_opts[@]}" hydra.run.dir="${out}/fill_hydra" "${extra_opts[@]}" > "${out}/fill.log" 2>&1 \
  || { tail -20 "${out}/fill.log"; exit 1; }
seconds=$(($(date +%s) - start))
log "teacher cache: ${audio_hours} audio hours filled in ${seconds} s with start-up" \
    "($(awk "BEGIN {printf \"%.0f\", ${audio_hours} * 3600 / ${seconds}}") audio-h per h; ${out}/fill.log)"

logs=()
for variant in ${variants}; do
  case ${variant} in
    eager) variant_opts=() ;;
    cuda_graphs) variant_opts=(task.speed.compile_layers=true task.speed.compile_mode=reduce-overhead) ;;
    *) echo "$0: unknown variant ${variant} (eager, cuda_graphs)" >&2; exit 1 ;;
  esac
  run_dir=$(realpath -m "${out}/${variant}")
  rm -rf "${run_dir}"  # a fresh run each time: its times are this check's
  start=$(date +%s)
  fairseq-hydra-train --config-dir "${MAIN_ROOT}/conf/distill" --config-name "${preset}" "${common[@]}" \
    "${variant_opts[@]}" optimization.max_update="${updates}" lr_scheduler.warmup_updates=$((updates * 7 / 100 + 1)) \
    common.log_interval=4 checkpoint.save_interval=1000 checkpoint.no_save=true \
    checkpoint.save_dir="${run_dir}/checkpoints" hydra.run.dir="${run_dir}/hydra" "${extra_opts[@]}" \
    > "${out}/${variant}.log" 2>&1 || { tail -30 "${out}/${variant}.log"; exit 1; }
  log "${variant}: ${updates} updates in $(($(date +%s) - start)) s with start-up (${out}/${variant}.log)"
  logs+=("${out}/${variant}.log")
done
python -m local.distill.throughput "${logs[@]}" | tee "${out}/throughput.md"
