#!/usr/bin/env bash
# Fast distillation of speech foundation models by interleaved stacking: the staged recipe.
#
#   ./run.sh --stage 1 --stop-stage 5                # the embedded default, on CPU
#   ./run.sh --librispeech-root /data/LibriSpeech --teacher-ckpt hubert_base_ls960.pt --ngpu 4
#
# Stages: 1 data prep, 2 teacher, 3 distillation with growth, 4 downstream ASR (ESPnet),
# 5 SUPERB evaluation. Every stage reads files and writes files, so any stage reruns alone.
set -euo pipefail

help_message="$(sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//')

Options (--name value; defaults shown):
$(sed -n '/^stage=/,/^superb_config=/p' "$0" | sed 's/^\([a-z0-9_]*\)=/  --\1 /; :dash; s/^\(  --[a-z0-9-]*\)_/\1-/; t dash')"

stage=1
stop_stage=5
ngpu=0                      # GPUs for stages 3-5 (0: CPU)
nj=2                        # parallel jobs (data prep, feature stores, ESPnet runs, mini-SUPERB heads)
librispeech_root=""         # LibriSpeech in its own layout; empty: the embedded espeak-ng corpus
librispeech_splits="train-clean-100 dev-clean test-clean"
teacher_ckpt=""             # a released fairseq HuBERT/wav2vec 2.0/data2vec checkpoint; empty: train one
expdir=exp
datadir=data
corpus_dir=db/synth         # where the embedded corpus's audio goes
corpus_config=conf/corpus/synth.yaml
teacher_config=hubert_tiny  # conf/teacher/<name>.yaml, for the embedded teacher
teacher_args=""             # stage 2: more fairseq-hydra-train overrides for the embedded teacher, e.g. "model.encoder_layers=12"
kmeans_clusters=50          # its k-means targets (MFCC, one iteration)
preset=tiny                 # conf/distill/<preset>.yaml: tiny, paper, deep_narrow, wide_shallow, distilhubert, dphubert_tiny, dphubert
operators=""                # stage 3: growth operators, one run each; empty: the preset's (task.growth.compare)
extra_presets=""            # stage 3: more students, one run of each preset's own operator (e.g. "dphubert_tiny"), evaluated beside them in stages 4 and 5
distill_args=""             # stage 3: more fairseq-hydra-train overrides, e.g. "optimization.max_update=1000"
teacher_cache=auto          # stage 3: true: the teacher's targets kept on disk (exp/teacher_cache), computed once before the runs and read by all; auto: true on the embedded corpus, false on LibriSpeech (HuBERT Base's need 0.8 GB per audio hour)
asr_config=conf/asr/tiny_s3prl.yaml  # stage 4: ESPnet ASR config (an S3PRL front end)
asr_feats_type=""           # stage 4: extracted (ESPnet trains on each upstream's stored hidden states) or raw (the config's front end, live); empty: extracted on the embedded corpus, raw on LibriSpeech
nbpe=30                     # stage 4: sentencepiece BPE size (LibriSpeech 100 h recipes use 5000)
bpemode=bpe                 # stage 4: sentencepiece model type, unigram or bpe (ESPnet's --bpemode)
inference_config=conf/asr/decode_ctc_greedy.yaml  # stage 4: decoding options (ESPnet's --inference_config)
superb_tasks=""             # stage 5 on real data: SUPERB tasks for S3PRL's run_downstream.py (pr asr sf ks sid; corpora in db.sh)
s3prl_root=""               # stage 5 on real data: a checkout of github.com/s3prl/s3prl (configs, lexicons, runner)
upstream_depths=""          # stages 4, 5: also evaluate the students cut to these depths (export --depth), e.g. "3 6 9"
superb_all_operators=false  # stage 5: true: the student of every growth operator of stage 3; false: stage 4's (the first operator's, with extra presets and depth cuts)
superb_config=conf/superb/mini.yaml  # stage 5: mini-SUPERB tasks, budgets and learning rates

cd "$(dirname "$0")"
. utils/parse_options.sh

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (${0##*/}:${BASH_LINENO[0]}) $*"; }
# Each stage's wall time, printed at the end (and kept in ${expdir}/stage_times.tsv).
stage_times=()
stage_begin() { _stage_start=${SECONDS}; }
stage_end() { stage_times+=("$1 $((SECONDS - _stage_start))"); }
print_stage_times() {
  local line n s total=0
  [ "${#stage_times[@]}" -gt 0 ] || return 0
  mkdir -p "${expdir}"
  printf 'stage\tseconds\n' > "${expdir}/stage_times.tsv"
  for line in "${stage_times[@]}"; do
    read -r n s <<< "${line}"
    total=$((total + s))
    printf '%s\t%s\n' "${n}" "${s}" >> "${expdir}/stage_times.tsv"
    log "stage ${n}: $((s / 60)) min $((s % 60)) s"
  done
  log "stages ${stage}-${stop_stage}: $((total / 60)) min $((total % 60)) s in all"
}
abspath() { realpath -m "$1"; }
# Stages 2 and 3 key a training directory by what made it (DIR/.inputs.json): a finished result of the
# same key is kept; a directory of other settings is refused, since fairseq would resume from its
# checkpoint_last.pt under the new ones.
# up_to_date DIR KEY RESULT: DIR/RESULT exists and was made from KEY.
up_to_date() { [ -f "$1/$3" ] && [ "$(cat "$1/.inputs.json" 2>/dev/null)" = "$2" ]; }
# claim_dir DIR KEY WHAT INPUTS: refuse DIR if it holds WHAT of other settings (INPUTS say which), else key it.
claim_dir() {
  if [ -f "$1/.inputs.json" ] && [ "$(cat "$1/.inputs.json")" != "$2" ]; then
    log "error: $1 holds $3 of other settings ($4 differ from $1/.inputs.json), which fairseq would" \
      "resume from; remove $1, or use another --expdir"
    exit 1
  fi
  mkdir -p "$1"
  echo "$2" > "$1/.inputs.json"
}
# export_upstream SRC NAME [export options]: SRC exported into ${upstream_dir}/NAME (local/export_upstream.sh)
export_upstream() { local/export_upstream.sh "$1" "${upstream_dir}/$2" "${@:3}"; }
. local/side_by_side.sh  # side_by_side N LOG_DIR FUNCTION NAME...: N jobs at a time, each its share of the cores

./local/setup_env.sh
. ./path.sh
. ./cmd.sh  # how jobs run: train_cmd, cuda_cmd (local: utils/run.pl; slurm: utils/slurm.pl)
# The runs of stage 3: the preset's, named by growth operator (distill/<operator>), then one per extra
# preset (distill/<preset>); stages 4 and 5 read their students.
operators=$(python -m local.distill.runs --preset "${preset}" --operators "${operators}")
for p in ${extra_presets}; do
  if [ "${p}" = "${preset}" ] || [[ " ${operators} " == *" ${p} "* ]]; then
    echo "run.sh: --extra-presets ${p}: already a run of --preset ${preset}; name another preset" >&2
    exit 1
  fi
  python -m local.distill.runs --preset "${p}" --own > /dev/null  # an unknown preset stops here
done
students="${operators}${extra_presets:+ ${extra_presets}}"
# run_preset RUN: the preset a stage-3 run trains; run_operator RUN: its growth operator.
run_preset() { if [[ " ${extra_presets} " == *" $1 "* ]]; then echo "$1"; else echo "${preset}"; fi; }
run_operator() {
  if [[ " ${extra_presets} " == *" $1 "* ]]; then python -m local.distill.runs --preset "$1" --own; else echo "$1"; fi
}

if [ -n "${librispeech_root}" ]; then
  read -r -a _splits <<< "${librispeech_splits}"
  train_set=${_splits[0]//-/_}
  valid_set=${_splits[1]//-/_}
  test_set=${_splits[2]//-/_}
else
  train_set=train
  valid_set=dev
  test_set=test
fi
if [ "${teacher_cache}" = auto ]; then
  if [ -n "${librispeech_root}" ]; then teacher_cache=false; else teacher_cache=true; fi
fi
case "${teacher_cache}" in true|false) ;; *) echo "run.sh: --teacher-cache ${teacher_cache}: true, false or auto" >&2; exit 1;; esac
[ -n "${asr_feats_type}" ] || if [ -n "${librispeech_root}" ]; then asr_feats_type=raw; else asr_feats_type=extracted; fi
case "${asr_feats_type}" in raw|extracted) ;; *) echo "run.sh: --asr-feats-type ${asr_feats_type}: raw or extracted" >&2; exit 1;; esac
teacher_dir=$(abspath "${expdir}/teacher")
distill_dir=$(abspath "${expdir}/distill")
asr_dir=$(abspath "${expdir}/asr")
upstream_dir=$(abspath "${expdir}/upstreams")
features_dir=$(abspath "${expdir}/features")  # each upstream's hidden states (local/feature_store.py), stages 4 and 5
manifests=$(abspath "${datadir}/manifests")

if [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ]; then
  stage_begin
  if [ -n "${librispeech_root}" ]; then
    log "Stage 1: LibriSpeech (${librispeech_splits}) from ${librispeech_root} -> ${datadir}"
    # shellcheck disable=SC2086
    ${train_cmd} "${expdir}/data_prep/log/prepare.log" python -m local.data.prepare librispeech \
      --root "${librispeech_root}" --splits ${librispeech_splits} --data-dir "${datadir}" --nj "${nj}"
  else
    log "Stage 1: synthesising the embedded corpus (${corpus_config}) -> ${corpus_dir}, ${datadir}"
    ${train_cmd} "${expdir}/data_prep/log/prepare.log" python -m local.data.prepare synth \
      --config "${corpus_config}" --corpus-dir "${corpus_dir}" --data-dir "${datadir}" --nj "${nj}"
  fi
  python -m local.data.summary "${datadir}"
  stage_end 1
fi

if [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ]; then
  stage_begin
  if [ -n "${teacher_ckpt}" ]; then
    log "Stage 2: checking the teacher ${teacher_ckpt} -> ${teacher_dir}/teacher.pt"
    rm -f "${teacher_dir}/.inputs.json"  # teacher.pt is the user's from now on, not one trained here
    python -m local.teacher.install "${teacher_ckpt}" "${teacher_dir}/teacher.pt"
  else
    # What a trained teacher is made from: the data, its config and every override.
    key=$(python -m local.stamp --file data="${manifests}" --file config="conf/teacher/${teacher_config}.yaml" \
      --value overrides="kmeans_clusters=${kmeans_clusters} ${teacher_args}")
    if up_to_date "${teacher_dir}" "${key}" teacher.pt; then
      log "Stage 2: ${teacher_dir}/teacher.pt is up to date with its inputs (${teacher_dir}/.inputs.json); kept"
      cat "${teacher_dir}/accuracy.md" 2>/dev/null || true
    else
      claim_dir "${teacher_dir}" "${key}" "a teacher" \
        "the data, conf/teacher/${teacher_config}.yaml, --kmeans-clusters or --teacher-args"
      log "Stage 2a: MFCC k-means labels for HuBERT pre-training -> ${teacher_dir}/labels"
      local/teacher/kmeans_labels.sh --manifest-dir "${manifests}" \
        --train-split "${train_set}" --splits "${train_set} ${valid_set}" \
        --n-clusters "${kmeans_clusters}" --nj "${nj}" --out-dir "${teacher_dir}/labels"
      log "Stage 2b: training the teacher with fairseq-hydra-train (conf/teacher/${teacher_config}.yaml)"
      read -r -a teacher_opts <<< "${teacher_args}"  # split on spaces, never globbed; last, so they win
      fairseq-hydra-train --config-dir "${MAIN_ROOT}/conf/teacher" --config-name "${teacher_config}" \
        task.data="${manifests}" task.label_dir="${teacher_dir}/labels" \
        dataset.train_subset="${train_set}" dataset.valid_subset="${valid_set}" \
        checkpoint.save_dir="${teacher_dir}/checkpoints" hydra.run.dir="${teacher_dir}/hydra" "${teacher_opts[@]}"
      python -m local.teacher.install --copy "${teacher_dir}/checkpoints/checkpoint_last.pt" "${teacher_dir}/teacher.pt"
      log "Stage 2c: masked-prediction accuracy on ${valid_set}, teacher vs random init"
      ${train_cmd} "${teacher_dir}/log/evaluate.log" python -m local.teacher.evaluate \
        --checkpoint "${teacher_dir}/teacher.pt" --data "${manifests}" --label-dir "${teacher_dir}/labels" \
        --split "${valid_set}" --out "${teacher_dir}/accuracy.md"
      cat "${teacher_dir}/accuracy.md"
    fi
  fi
  stage_end 2
fi

if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ]; then
  stage_begin
  read -r -a extra_opts <<< "${distill_args}"  # split on spaces, never globbed; last, so they win
  if [ "${ngpu}" -gt 0 ]; then job_cmd="${cuda_cmd} --gpu ${ngpu}"; else job_cmd=${train_cmd}; fi
  cache_opts=()
  # One teacher cache for all runs (fairseq_plugin/teacher_cache.py keys it on the teacher, data, crops and
  # precision), so their steps run the student alone.
  cache_dir=$(abspath "${expdir}/teacher_cache")
  [ "${teacher_cache}" = true ] && cache_opts=("task.speed.teacher_cache=${cache_dir}")
  # distill <preset> <op> <log> <dir> [overrides...]: one fairseq-hydra-train run of <preset> with growth <op>
  # into <dir>/checkpoints, through job_cmd (cmd.sh: utils/run.pl here or utils/slurm.pl, the output in
  # <log>); the user's --distill-args come last, so they win.
  distill() {
    local run_preset=$1 op=$2 log_file=$3 dir=$4
    shift 4
    # shellcheck disable=SC2086
    ${job_cmd} "${log_file}" fairseq-hydra-train --config-dir "${MAIN_ROOT}/conf" --config-name "distill/${run_preset}" \
      task.data="${manifests}" task.teacher_checkpoint="${teacher_dir}/teacher.pt" task.growth.operator="${op}" \
      dataset.train_subset="${train_set}" dataset.valid_subset="${valid_set}" "${device_opts[@]}" \
      checkpoint.save_dir="${dir}/checkpoints" hydra.run.dir="${dir}/hydra" "${cache_opts[@]}" "$@" "${extra_opts[@]}"
  }
  if [ "${teacher_cache}" = true ]; then
    # Filled before the runs, so that no run's wall clock (which the report compares) holds the teacher's
    # pass; utterances already cached are skipped. An extra preset of other crops fills its own as it goes.
    read -r -a device_opts <<< "$(python -m local.distill.batch --preset "${preset}" --ngpu "${ngpu}")"
    log "Stage 3: the teacher's targets and the students' input, once for all runs -> ${cache_dir} (log: fill.log)"
    fill_cmd=${train_cmd}
    [ "${ngpu}" -eq 0 ] || fill_cmd="${cuda_cmd} --gpu 1"  # the teacher's forward, one process
    ${fill_cmd} "${cache_dir}/fill.log" python -m fairseq_plugin.fill_teacher_cache \
      --config-dir "${MAIN_ROOT}/conf" --config-name "distill/${preset}" task.data="${manifests}" \
      task.teacher_checkpoint="${teacher_dir}/teacher.pt" dataset.train_subset="${train_set}" \
      dataset.valid_subset="${valid_set}" "${device_opts[@]}" hydra.run.dir="${cache_dir}/hydra" \
      "${cache_opts[@]}" "${extra_opts[@]}"
  fi
  for run in ${students}; do
    run_dir=${distill_dir}/${run}
    p=$(run_preset "${run}")
    op=$(run_operator "${run}")
    # Device and batch: the preset's utterances per update on any GPU count (local/distill/batch.py).
    read -r -a device_opts <<< "$(python -m local.distill.batch --preset "${p}" --ngpu "${ngpu}")"
    # What a run directory holds: the teacher, the data, the preset and every override, and its
    # operator; a finished run of the same key is kept as it is (its log and student).
    key="${op} $(python -m local.stamp --file teacher="${teacher_dir}/teacher.pt" --file data="${manifests}" \
      --file preset="conf/distill/${p}.yaml" --value overrides="${device_opts[*]} ${cache_opts[*]} ${distill_args}")"
    if up_to_date "${run_dir}" "${key}" student.pt; then
      log "Stage 3: ${run_dir} is up to date with its inputs (${run_dir}/.inputs.json); kept"
      continue
    fi
    claim_dir "${run_dir}" "${key}" "a run" "the teacher, data, preset or overrides"
    log "Stage 3: distilling ${teacher_dir}/teacher.pt into conf/distill/${p}.yaml, growth ${op} -> ${run_dir}"
    distill "${p}" "${op}" "${run_dir}/train.log" "${run_dir}"
    last=${run_dir}/checkpoints/checkpoint_last.pt
    if [ "$(python -m local.distill.runs --preset "${p}" --prunes)" = true ]; then
      # DPHuBERT's second phase: the pruned shape, distilled on without gates
      log "Stage 3: materialising the pruned student -> ${run_dir}/pruned.pt; final distillation -> ${run_dir}/final"
      python -m fairseq_plugin.prune "${last}" "${run_dir}/pruned.pt" --final-overrides "${run_dir}/final.overrides" \
        | tee "${run_dir}/pruned.txt"
      mapfile -t final_opts < "${run_dir}/final.overrides"
      distill "${p}" "${op}" "${run_dir}/final.log" "${run_dir}/final" "${final_opts[@]}"
      last=${run_dir}/final/checkpoints/checkpoint_last.pt
    fi
    python -m local.distill.finalize "${last}" "${run_dir}/student.pt"  # last, and atomic: a finished run
  done
  log "Stage 3: comparing the runs -> ${distill_dir}/report.md, ${distill_dir}/loss_vs_wallclock.png"
  # shellcheck disable=SC2086
  python -m local.distill.report "${distill_dir}" --runs ${students}
  stage_end 3
fi
if [ "${stage}" -le 4 ] && [ "${stop_stage}" -ge 4 ]; then
  stage_begin
  student_op=${operators%% *}
  log "Stage 4: ESPnet ASR (${asr_config}) on a frozen teacher, the ${student_op} student${extra_presets:+, the ${extra_presets} student(s)} and a random-init student"
  export_upstream "${teacher_dir}/teacher.pt" teacher
  export_upstream "${distill_dir}/${student_op}/student.pt" "${student_op}"
  export_upstream "${distill_dir}/${student_op}/student.pt" random_init --random-init
  more_tags=()
  for d in ${upstream_depths}; do
    export_upstream "${distill_dir}/${student_op}/student.pt" "${student_op}_depth${d}" --depth "${d}"
    more_tags+=("${student_op}_depth${d}")
  done
  for p in ${extra_presets}; do
    export_upstream "${distill_dir}/${p}/student.pt" "${p}"
    more_tags+=("${p}")
  done
  tags=(teacher "${student_op}" "${more_tags[@]}" random_init)
  if [ "${asr_feats_type}" = extracted ]; then
    # Each upstream's hidden states, once, for ESPnet's extracted-feature route (and stage 5's heads).
    # One job per upstream and split, the long training splits first, so the cores stay busy to the end.
    log "Stage 4: hidden states of ${tags[*]} -> ${features_dir}/<upstream>/{${train_set},${valid_set},${test_set}}"
    store() {  # store UPSTREAM.SPLIT
      python -m local.feature_store --upstream "${upstream_dir}/${1%.*}/s3prl.pt" --data-dir "${datadir}" \
        --splits "${1##*.}" --out "${features_dir}/${1%.*}" --ngpu "${ngpu}"
    }
    store_jobs=()
    for split in "${train_set}" "${valid_set}" "${test_set}"; do store_jobs+=("${tags[@]/%/.${split}}"); done
    side_by_side "${nj}" "${features_dir}/log" store "${store_jobs[@]}"
  fi
  # On CPUs every run at once, one thread each: a run is mostly one process's small LSTM steps, and
  # three runs time-sliced on two cores end sooner than two and then one. On GPUs one after another,
  # each with all of them (ESPnet's own processes, one per GPU).
  asr_at_once=$(( ${#tags[@]} > nj ? ${#tags[@]} : nj ))
  [ "${ngpu}" -eq 0 ] || asr_at_once=1
  log "Stage 4: ESPnet runs of ${tags[*]}, ${asr_at_once} at a time -> ${asr_dir} (logs: ${asr_dir}/log/<upstream>.log)"
  asr() {
    local feats_opts=()
    [ "${asr_feats_type}" = raw ] || feats_opts=(--feats-dir "${features_dir}/$1")
    local/asr/asr.sh --tag "$1" --upstream-dir "${upstream_dir}/$1" --config "${asr_config}" --nbpe "${nbpe}" \
      --bpemode "${bpemode}" --inference-config "${inference_config}" "${feats_opts[@]}" \
      --datadir "${datadir}" --train-set "${train_set}" --valid-set "${valid_set}" --test-set "${test_set}" \
      --asr-dir "${asr_dir}" --ngpu "${ngpu}"
  }
  side_by_side "${asr_at_once}" "${asr_dir}/log" asr "${tags[@]}"
  exps=()
  for tag in "${tags[@]}"; do
    exps+=("${tag}=${asr_dir}/asr_$(basename "${asr_config}" .yaml)_${tag}_bpe${nbpe}")  # asr.sh's name for it
  done
  # WER/CER read back from sclite's score_{wer,cer}/result.txt -> results.md; all sclite tables -> RESULTS.md
  python -m local.asr.report "${asr_dir}" --exps "${exps[@]}" --test-set "${test_set}" \
    --inference "$(basename "${inference_config}" .yaml)"
  stage_end 4
fi
# Stage 5's students: stage 4's (the first operator's and each extra preset's), or every stage-3 run's.
stage5_students="${operators%% *}${extra_presets:+ ${extra_presets}}"
[ "${superb_all_operators}" = true ] && stage5_students=${students}
if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 5 ] && [ -n "${librispeech_root}" ]; then
  stage_begin
  # SUPERB proper: S3PRL's own run_downstream.py (train, then evaluate) in .venv-s3prl, on the
  # corpora db.sh names, for the teacher and every stage-3 student. Checked before any export.
  superb_dir=$(abspath "${expdir}/superb")
  superb_opts=(--tasks "${superb_tasks}" --s3prl-root "${s3prl_root}" --db db.sh
               --librispeech-root "$(abspath "${librispeech_root}")")
  log "Stage 5: SUPERB (${superb_tasks:-no task given}) with S3PRL's run_downstream.py"
  python -m local.superb.s3prl_runner --check "${superb_opts[@]}"
  export_upstream "${teacher_dir}/teacher.pt" teacher
  upstreams=(--upstream "teacher=${upstream_dir}/teacher/s3prl.pt")
  for op in ${stage5_students}; do
    export_upstream "${distill_dir}/${op}/student.pt" "${op}"
    upstreams+=(--upstream "${op}=${upstream_dir}/${op}/s3prl.pt")
    [ "$(run_preset "${op}")" = "${preset}" ] || continue  # depth cuts: the preset's own students
    for d in ${upstream_depths}; do
      export_upstream "${distill_dir}/${op}/student.pt" "${op}_depth${d}" --depth "${d}"
      upstreams+=(--upstream "${op}_depth${d}=${upstream_dir}/${op}_depth${d}/s3prl.pt")
    done
  done
  if [ "${ngpu}" -gt 0 ]; then job_cmd="${cuda_cmd} --gpu 1"; else job_cmd=${train_cmd}; fi
  log "Stage 5: ${superb_tasks} -> ${superb_dir}/<upstream>/<task>/ (train.log, test.log), ${superb_dir}/results.md"
  python -m local.superb.s3prl_runner "${superb_opts[@]}" --out "${superb_dir}" --ngpu "${ngpu}" \
    --cmd "${job_cmd}" "${upstreams[@]}"
  stage_end 5
elif [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 5 ]; then
  stage_begin
  superb_dir=$(abspath "${expdir}/superb")
  upstreams=()
  export_upstream "${teacher_dir}/teacher.pt" teacher
  names=(teacher)
  for op in ${stage5_students}; do
    export_upstream "${distill_dir}/${op}/student.pt" "${op}"
    names+=("${op}")
    [ "$(run_preset "${op}")" = "${preset}" ] || continue  # depth cuts: the preset's own students
    for d in ${upstream_depths}; do
      export_upstream "${distill_dir}/${op}/student.pt" "${op}_depth${d}" --depth "${d}"
      names+=("${op}_depth${d}")
    done
  done
  export_upstream "${distill_dir}/${operators%% *}/student.pt" random_init --random-init
  names+=(random_init)
  for name in "${names[@]}"; do
    upstreams+=(--upstream "${name}=${upstream_dir}/${name}/s3prl.pt")
  done
  log "Stage 5: mini-SUPERB (${superb_config}: PR, ASR, SF, KS, SID) -> ${superb_dir}/results.{md,csv}, curves.png, layer_weights.png (log: ${superb_dir}/log/superb.log)"
  ${train_cmd} "${superb_dir}/log/superb.log" python -m local.superb.run --config "${superb_config}" \
    --datadir "${datadir}" --out "${superb_dir}" --features-dir "${features_dir}" --nj "${nj}" --ngpu "${ngpu}" \
    "${upstreams[@]}"
  cat "${superb_dir}/results.md"
  stage_end 5
fi
log "Finished stages ${stage}-${stop_stage}"
print_stage_times
