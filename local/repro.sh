#!/usr/bin/env bash
# The reproduction mode: does interleaved stacking distil as well as full depth, faster, where
# stacking on top and MIDAS lose quality? Tested at small scale, with seeds; not part of the
# default job. Uses run.sh's own stages, each in its own exp dir under --expdir.
#
#   local/repro.sh                                       # every stage below
#   local/repro.sh --seeds "1 2" --updates 200 --teacher-updates 300   # a quick look
#
# Stages:
#   1 the embedded corpus (run.sh stage 1; reused when data/ holds it)
#   2 a 12-layer teacher (HuBERT pre-training on MFCC k-means, run.sh stage 2 with --teacher-args)
#     and its masked-prediction accuracy against always guessing the most frequent cluster
#   3 what each of its layers encodes: phone error rate and speaker accuracy per layer
#     (local/superb/layer_probe.py)
#   4 students of the `tiny` preset at each seed: interleaved, stack_top, midas and none with the
#     EQL schedule (run.sh stage 3), and interleaved with PROP; the teacher's targets are cached
#     on disk, once per seed, for all five
#   5 the report: <expdir>/report.md (mean +- std over seeds, paired differences, time to quality)
set -euo pipefail

stage=1
stop_stage=5
expdir=exp/repro
datadir=data
seeds="1 2 3"
updates=600            # student updates per run
teacher_updates=2000   # teacher pre-training updates
teacher_layers=12
preset=tiny
teacher_args=""        # more teacher overrides (after the mode's own), e.g. "model.encoder_embed_dim=192"
distill_args=""        # more student overrides (after the mode's own)
kmeans_clusters=50
superb_config=conf/superb/mini.yaml   # the layer probe's task budgets
nj=2

cd "$(dirname "$0")/.."
. utils/parse_options.sh

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (repro) $*"; }
./local/setup_env.sh
. ./path.sh

teacher_exp=${expdir}/teacher_exp
teacher=${teacher_exp}/teacher/teacher.pt
# Validation ten times a run: the dev-loss curve that time-to-quality is read from.
valid_every=$(( updates / 10 > 0 ? updates / 10 : 1 ))
student_args="optimization.max_update=${updates} lr_scheduler.warmup_updates=$(( updates * 7 / 100 + 1 ))"
student_args+=" dataset.validate_interval_updates=${valid_every} checkpoint.save_interval_updates=${valid_every}"
# The teacher runs once per utterance for all the runs of a seed (crops fixed per utterance and seed):
# a student step is then the student alone (fairseq_plugin/teacher_cache.py).
student_args+=" task.speed.teacher_cache=$(realpath -m "${expdir}")/teacher_cache"

if [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ]; then
  if [ -f "${datadir}/.prepared.json" ]; then
    log "Stage 1: ${datadir} is prepared; reused"
  else
    ./run.sh --stage 1 --stop-stage 1 --datadir "${datadir}" --expdir "${expdir}/data_exp" --nj "${nj}"
  fi
fi

if [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ]; then
  log "Stage 2: a ${teacher_layers}-layer teacher, ${teacher_updates} updates -> ${teacher}"
  ./run.sh --stage 2 --stop-stage 2 --datadir "${datadir}" --expdir "${teacher_exp}" --nj "${nj}" \
    --kmeans-clusters "${kmeans_clusters}" \
    --teacher-args "model.encoder_layers=${teacher_layers} optimization.max_update=${teacher_updates} \
optimization.lr=[0.0005] lr_scheduler.warmup_updates=$(( teacher_updates * 8 / 100 + 1 )) \
checkpoint.save_interval_updates=$(( teacher_updates / 8 + 1 )) dataset.validate_interval_updates=$(( teacher_updates / 8 + 1 )) \
${teacher_args}"
fi

if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ]; then
  local/export_upstream.sh "${teacher}" "${expdir}/upstreams/teacher"
  log "Stage 3: what each of the teacher's layers encodes -> ${expdir}/probe/layers.md"
  python -m local.superb.layer_probe --upstream "teacher=${expdir}/upstreams/teacher/s3prl.pt" \
    --config "${superb_config}" --datadir "${datadir}" --out "${expdir}/probe"
fi

# The student runs: <name> -> "operators|extra overrides"; each seed's run lands in
# ${expdir}/<group>_seed<k>/distill/<operator>.
declare -A groups=([eql]="interleaved stack_top midas none|" [prop]="interleaved|task.growth.schedule=prop")
if [ "${stage}" -le 4 ] && [ "${stop_stage}" -ge 4 ]; then
  for seed in ${seeds}; do
    # The teacher's targets first, so that no run's wall clock holds the teacher's pass.
    read -r -a fill_opts <<< "common.seed=${seed} ${student_args} ${distill_args}"
    log "Stage 4: seed ${seed}: the teacher's targets, once for all its runs -> ${expdir}/teacher_cache"
    python -m fairseq_plugin.fill_teacher_cache --config-dir "${MAIN_ROOT}/conf" --config-name "distill/${preset}" \
      task.data="$(realpath "${datadir}")/manifests" task.teacher_checkpoint="$(realpath "${teacher}")" \
      dataset.train_subset=train dataset.valid_subset=dev common.cpu=true "${fill_opts[@]}" \
      hydra.run.dir="${expdir}/fill_seed${seed}" > "${expdir}/fill_seed${seed}.log" 2>&1 \
      || { tail -n 20 "${expdir}/fill_seed${seed}.log"; exit 1; }
    for group in eql prop; do
      run_exp=${expdir}/${group}_seed${seed}
      mkdir -p "${run_exp}/teacher"
      ln -sfn "$(realpath "${teacher}")" "${run_exp}/teacher/teacher.pt"  # stage 3 reads <expdir>/teacher/teacher.pt
      log "Stage 4: seed ${seed}, ${group}: ${groups[${group}]%%|*} -> ${run_exp}/distill"
      ./run.sh --stage 3 --stop-stage 3 --datadir "${datadir}" --expdir "${run_exp}" --preset "${preset}" \
        --operators "${groups[${group}]%%|*}" \
        --distill-args "common.seed=${seed} ${student_args} ${groups[${group}]#*|} ${distill_args}"
    done
  done
fi

if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 5 ]; then
  log "Stage 5: the report -> ${expdir}/report.md"
  # shellcheck disable=SC2086
  python -m local.repro_report "${expdir}" --seeds ${seeds}
fi
