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
#     EQL schedule (run.sh stage 3), and interleaved with PROP; with --ablations all, interleaved
#     EQL with one change each (fresh Adam moments for the copies, after or before their source;
#     noise on the copies; a learning-rate re-warm-up after each growth; the layer terms summed;
#     --ablations names a subset); with --shapes, the deep-versus-wide students (Ashihara et al.
#     2022) at about the `tiny` student's size, no growth: 3 x 240 and DistilHuBERT-shaped 2 x 272,
#     heads for every target on the last layer (deep is `none`, 12 x 128);
#     for each of --budgets, --budget-operators (interleaved and none) again at that many updates
#     (does the gap close, does the operators' order change with a longer run?). The teacher's
#     targets are cached on disk, once per seed, for all of them
#   5 downstream: mini-SUPERB (PR, ASR, SF, KS, SID) of the teacher, a random-init student and every
#     student of stage 4's main runs (and shapes) at each of --downstream-seeds
#     (local/repro_downstream.py; --downstream false skips it)
#   6 the report: <expdir>/report.md (mean +- std over seeds, paired differences, time to quality,
#     downstream scores, deep versus wide)
set -euo pipefail

stage=1
stop_stage=6
expdir=exp/repro
datadir=data
seeds="1 2 3"
updates=600            # student updates per run
budgets="2400"         # longer runs of --budget-operators ("" for none)
budget_operators="interleaved none"   # the operators run at each longer budget, e.g. "interleaved stack_top midas none"
ablations=all          # interleaved EQL with one change each: all, "" (none), or some of "fresh fresh_before noise noise_big rewarm sum"
teacher_updates=2000   # teacher pre-training updates
teacher_layers=12
preset=tiny
teacher_args=""        # more teacher overrides (after the mode's own), e.g. "model.encoder_embed_dim=192"
distill_args=""        # more student overrides (after the mode's own)
kmeans_clusters=50
superb_config=conf/superb/mini.yaml   # the layer probe's task budgets
shapes=true            # stage 4: the deep-versus-wide students too (true/false)
downstream=true        # stage 5: mini-SUPERB of the students (true/false)
downstream_seeds=""    # stage 5: the student seeds taken downstream; empty: all of --seeds
downstream_config=conf/superb/mini.yaml   # stage 5: mini-SUPERB's tasks and budgets
downstream_head_seeds="0"   # stage 5: head seeds per student (the spread reported is over student seeds)
nj=2

cd "$(dirname "$0")/.."
. utils/parse_options.sh

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (repro) $*"; }
./local/setup_env.sh
. ./path.sh

teacher_exp=${expdir}/teacher_exp
teacher=${teacher_exp}/teacher/teacher.pt
# A student run of $1 updates: validation ten times a run (the dev-loss curve that time-to-quality
# is read from), warm-up 7 % as in the paper. The teacher runs once per utterance for all the runs
# of a seed (crops fixed per utterance and seed): a step is then the student alone
# (fairseq_plugin/teacher_cache.py).
student_args() {
  local u=$1 every=$(( $1 / 10 > 0 ? $1 / 10 : 1 ))
  echo "optimization.max_update=${u} lr_scheduler.warmup_updates=$(( u * 7 / 100 + 1 ))" \
    "dataset.validate_interval_updates=${every} checkpoint.save_interval_updates=${every}" \
    "task.speed.teacher_cache=$(realpath -m "${expdir}")/teacher_cache"
}

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
  # the teacher's feature store is stage 5's too (stamped: made once, read by both)
  python -m local.superb.layer_probe --upstream "teacher=${expdir}/upstreams/teacher/s3prl.pt" \
    --config "${superb_config}" --datadir "${datadir}" --out "${expdir}/probe" \
    --features-dir "${expdir}/superb/features" --nj "${nj}"
fi

# The student runs: <group> -> "operators|updates|extra overrides"; each seed's run lands in
# ${expdir}/<group>_seed<k>/distill/<operator> (local/repro_report.py reads them by these names).
declare -A groups=([eql]="interleaved stack_top midas none|${updates}|" [prop]="interleaved|${updates}|task.growth.schedule=prop")
group_order="eql prop"
declare -A ablation_groups=([fresh]="interleaved|${updates}|task.growth.copy_state=fresh"
  [fresh_before]="interleaved|${updates}|task.growth.copy_state=fresh task.growth.copy_at=before"
  [noise]="interleaved|${updates}|task.growth.copy_noise=0.01"
  [noise_big]="interleaved|${updates}|task.growth.copy_noise=0.1"
  [rewarm]="interleaved|${updates}|task.growth.rewarmup_updates=$(( updates * 7 / 100 + 1 ))"
  [sum]="interleaved|${updates}|criterion.layer_reduce=sum")
all_ablations="fresh fresh_before noise noise_big rewarm sum"
case "${ablations}" in
  all|true) ablations=${all_ablations} ;;
  false) ablations="" ;;
esac
for a in ${ablations}; do
  [ -n "${ablation_groups[${a}]+set}" ] || { log "error: --ablations ${a}: all, \"\", or some of ${all_ablations}"; exit 1; }
  groups+=([abl_${a}]="${ablation_groups[${a}]}")
  group_order+=" abl_${a}"
done
if [ "${shapes}" = true ]; then  # local/repro_downstream.py SHAPES names them
  groups+=([shape_wide]="none|${updates}|model.encoder_layers=3 model.encoder_embed_dim=240 \
model.encoder_ffn_embed_dim=960 model.encoder_attention_heads=4 criterion.target_layers=last"
    [shape_distilhubert]="none|${updates}|model.encoder_layers=2 model.encoder_embed_dim=272 \
model.encoder_ffn_embed_dim=1088 model.encoder_attention_heads=4 criterion.target_layers=last \
criterion.loss=l1_cosine criterion.layer_weight=1.0")
  group_order+=" shape_wide shape_distilhubert"
fi
for u in ${budgets}; do
  groups+=([budget${u}]="${budget_operators}|${u}|")
  group_order+=" budget${u}"
done
if [ "${stage}" -le 4 ] && [ "${stop_stage}" -ge 4 ]; then
  for seed in ${seeds}; do
    # The teacher's targets first, so that no run's wall clock holds the teacher's pass.
    read -r -a fill_opts <<< "common.seed=${seed} $(student_args "${updates}") ${distill_args}"
    log "Stage 4: seed ${seed}: the teacher's targets, once for all its runs -> ${expdir}/teacher_cache"
    python -m fairseq_plugin.fill_teacher_cache --config-dir "${MAIN_ROOT}/conf" --config-name "distill/${preset}" \
      task.data="$(realpath "${datadir}")/manifests" task.teacher_checkpoint="$(realpath "${teacher}")" \
      dataset.train_subset=train dataset.valid_subset=dev common.cpu=true "${fill_opts[@]}" \
      hydra.run.dir="${expdir}/fill_seed${seed}" > "${expdir}/fill_seed${seed}.log" 2>&1 \
      || { tail -n 20 "${expdir}/fill_seed${seed}.log"; exit 1; }
    for group in ${group_order}; do
      IFS='|' read -r operators group_updates overrides <<< "${groups[${group}]}"
      run_exp=${expdir}/${group}_seed${seed}
      mkdir -p "${run_exp}/teacher"
      ln -sfn "$(realpath "${teacher}")" "${run_exp}/teacher/teacher.pt"  # stage 3 reads <expdir>/teacher/teacher.pt
      log "Stage 4: seed ${seed}, ${group}: ${operators}, ${group_updates} updates -> ${run_exp}/distill"
      ./run.sh --stage 3 --stop-stage 3 --datadir "${datadir}" --expdir "${run_exp}" --preset "${preset}" \
        --operators "${operators}" \
        --distill-args "common.seed=${seed} $(student_args "${group_updates}") ${distill_args} ${overrides}"
    done
  done
fi

if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 5 ] && [ "${downstream}" = true ]; then
  seeds_down=${downstream_seeds:-${seeds}}
  local/export_upstream.sh "${teacher}" "${expdir}/upstreams/teacher"
  upstreams=(--upstream "teacher=${expdir}/upstreams/teacher/s3prl.pt")
  # shellcheck disable=SC2086
  listing=$(python -m local.repro_downstream upstreams "${expdir}" --seeds ${seeds_down} \
    $([ "${shapes}" = true ] && echo --shapes))  # fails, naming the file, where a student is missing
  mapfile -t pairs <<< "${listing}"
  for pair in "${pairs[@]}"; do
    name=${pair%%=*}
    local/export_upstream.sh "${pair#*=}" "${expdir}/upstreams/${name}"
    upstreams+=(--upstream "${name}=${expdir}/upstreams/${name}/s3prl.pt")
  done
  first=${pairs[0]#*=}  # a student of the preset's shape, its weights drawn afresh
  local/export_upstream.sh "${first}" "${expdir}/upstreams/random_init" --random-init
  upstreams+=(--upstream "random_init=${expdir}/upstreams/random_init/s3prl.pt")
  log "Stage 5: mini-SUPERB (${downstream_config}) of $(( ${#upstreams[@]} / 2 )) upstreams -> ${expdir}/superb (log: ${expdir}/superb/superb.log)"
  mkdir -p "${expdir}/superb"
  # shellcheck disable=SC2086
  python -m local.superb.run --config "${downstream_config}" --datadir "${datadir}" --out "${expdir}/superb" \
    --seeds ${downstream_head_seeds} --nj "${nj}" "${upstreams[@]}" > "${expdir}/superb/superb.log" 2>&1 || { tail -n 20 "${expdir}/superb/superb.log"; exit 1; }
  cat "${expdir}/superb/results.md"
fi

if [ "${stage}" -le 6 ] && [ "${stop_stage}" -ge 6 ]; then
  log "Stage 6: the report -> ${expdir}/report.md"
  # shellcheck disable=SC2086
  python -m local.repro_report "${expdir}" --seeds ${seeds} --budgets ${budgets}
fi
