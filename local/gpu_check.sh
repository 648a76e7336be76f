#!/usr/bin/env bash
# On a GPU machine, one command that checks what the CPU tests cannot:
#   1. bf16 reaches the teacher's and the student's layers on CUDA (the tests marked `gpu`);
#   2. 50 updates of the `paper` preset (with its growth) from a HuBERT Base-shaped teacher with
#      random weights, on synthetic audio (local/distill/synthetic.py), on 2 GPUs when there are 2;
#   3. the benchmark's table (python -m fairseq_plugin.bench: ms per step, audio-hours per hour,
#      memory, the speed levers and what growth saves);
#   4. the paper preset trained from a teacher cache, eager and with CUDA graphs, as fairseq logs
#      it per depth (local/cached_throughput.sh), after the cache fill's own time.
# Without CUDA it says so and exits 0, having checked nothing.
#
#   local/gpu_check.sh [--out exp/gpu_check] [--updates 50] [--ngpu 2] [--utterances 512]
set -euo pipefail

out=exp/gpu_check
updates=50
ngpu=2          # at most; fewer if fewer are visible
utterances=512  # synthetic training utterances, 3-16 s each

cd "$(dirname "$0")/.."
. utils/parse_options.sh
. ./path.sh

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (gpu_check) $*"; }

if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  log "no CUDA device (torch.cuda.is_available() is False): nothing checked; run this on a GPU machine"
  exit 0
fi
ngpu=$(python -c "import torch; print(min(${ngpu}, torch.cuda.device_count()))")
log "$(python -c "import torch; print(', '.join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))"); using ${ngpu}"
mkdir -p "${out}"

# Each step runs even when one before it failed, so that one call on a GPU machine reports all four.
failed=()

log "1/4 bf16 on CUDA: python -m pytest -m gpu"
rc=0
# Only the modules that hold gpu tests are collected: the others need ESPnet and S3PRL, which a
# GPU check does not.
mapfile -t gpu_modules < <(grep -l "pytest.mark.gpu" tests/test_*.py)
python -m pytest -q -m gpu "${gpu_modules[@]}" || rc=$?
if [ "${rc}" -eq 5 ]; then
  log "no test is marked gpu"
elif [ "${rc}" -ne 0 ]; then
  failed+=("1/4 (pytest -m gpu exited ${rc})")
fi

paper_preset() {
  local data run_dir start device_opts
  data=$(realpath -m "${out}/data")
  run_dir=$(realpath -m "${out}/paper_${ngpu}gpu")
  [ -f "${data}/valid.tsv" ] || python -m local.distill.synthetic --out "${data}" --utterances "${utterances}" || return 1
  rm -rf "${run_dir}"  # a fresh run each time, so that its times are the check's
  read -r -a device_opts <<< "$(python -m local.distill.batch --preset paper --ngpu "${ngpu}")" || return 1
  start=$(date +%s)
  fairseq-hydra-train --config-dir "${MAIN_ROOT}/conf/distill" --config-name paper \
    task.data="${data}" task.teacher_checkpoint="${data}/teacher.pt" \
    dataset.train_subset=train dataset.valid_subset=valid "${device_opts[@]}" \
    optimization.max_update="${updates}" lr_scheduler.warmup_updates=$((updates * 7 / 100 + 1)) \
    common.log_interval=10 checkpoint.save_interval=1000 \
    checkpoint.save_dir="${run_dir}/checkpoints" hydra.run.dir="${run_dir}/hydra" 2>&1 | tee "${run_dir}.log" || return 1
  python - "${run_dir}" "${updates}" "$(($(date +%s) - start))" <<'EOF'
import sys, torch
run_dir, updates, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ckpt = torch.load(f"{run_dir}/checkpoints/checkpoint_last.pt", map_location="cpu", weights_only=False)
done, depth = ckpt["optimizer_history"][-1]["num_updates"], int(ckpt["model"]["depth"])
assert done == updates and depth == 12, f"{run_dir}: {done} updates, depth {depth}; expected {updates}, 12"
print(f"paper preset: {done} updates, grown to depth {depth}, in {seconds} s with start-up and validation")
EOF
}

log "2/4 ${updates} updates of the paper preset from a HuBERT Base-shaped teacher, on ${ngpu} GPU(s)"
paper_preset || failed+=("2/4 (the paper preset: ${out}/paper_${ngpu}gpu.log)")

log "3/4 the benchmark: python -m fairseq_plugin.bench"
python -m fairseq_plugin.bench --out "${out}/bench.json" || failed+=("3/4 (the benchmark)")

log "4/4 the paper preset from a teacher cache, eager and with CUDA graphs: local/cached_throughput.sh"
local/cached_throughput.sh --out "${out}/cached_throughput" || failed+=("4/4 (${out}/cached_throughput)")
if [ "${#failed[@]}" -gt 0 ]; then
  log "failed: ${failed[*]}"
  exit 1
fi
log "done: ${out}/paper_${ngpu}gpu.log, ${out}/bench.json, ${out}/cached_throughput/throughput.md"
