#!/usr/bin/env bash
# HuBERT iteration-1 targets with fairseq's own scripts (examples/hubert/simple_kmeans; the MFCC
# dump through local/teacher/dump_mfcc.py, which only swaps in a soundfile reader):
# MFCC + deltas (39 dims, 100 frames/s), MiniBatchKMeans on the train split, one label per
# frame for every split. Writes <out-dir>/{<split>.km, dict.km.txt, km.bin}, moved into place
# at the end, so a failed run leaves no half-written label dir.
set -euo pipefail

manifest_dir=data/manifests
train_split=train
splits="train dev"
n_clusters=50
nj=2
out_dir=exp/teacher/labels
seed=0
. utils/parse_options.sh

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (kmeans_labels) $*"; }

if [ -f "${out_dir}/dict.km.txt" ]; then
  log "${out_dir} exists; nothing to do (remove it to recompute)"
  exit 0
fi
# Shards run side by side, each on its share of the cores: two torch processes that each spin up a
# thread per core halved the MFCC step's speed on 2 cores (13.7 s against 7.0 s for the dev set).
shard_threads=$(( $(nproc) / nj > 1 ? $(nproc) / nj : 1 ))
km_scripts=$(python -c 'import fairseq, os; print(os.path.dirname(fairseq.__file__))')/examples/hubert/simple_kmeans
mkdir -p "$(dirname "${out_dir}")"
tmp=$(mktemp -d "$(dirname "${out_dir}")/.labels.tmp-XXXXXX")
trap 'rm -rf "${tmp}"' EXIT
mkdir -p "${tmp}/feats" "${tmp}/logs"
# wait_shards LOG...: wait for the shards running in the background; a failed one stops here, with the logs' ends.
wait_shards() {
  local job
  for job in $(jobs -p); do wait "${job}" || { tail -n 5 "$@"; exit 1; }; done
}

for split in ${splits}; do
  log "MFCC features for ${split} (${nj} shards)"
  for rank in $(seq 0 $((nj - 1))); do
    OMP_NUM_THREADS=${shard_threads} python -m local.teacher.dump_mfcc "${manifest_dir}" "${split}" "${nj}" "${rank}" \
      "${tmp}/feats" > "${tmp}/logs/mfcc_${split}_${rank}.log" 2>&1 &
  done
  wait_shards "${tmp}"/logs/mfcc_"${split}"_*.log
done

log "k-means (${n_clusters} clusters) on ${train_split}"
python "${km_scripts}/learn_kmeans.py" "${tmp}/feats" "${train_split}" "${nj}" "${tmp}/km.bin" "${n_clusters}" \
  --percent -1 --seed "${seed}" > "${tmp}/logs/kmeans.log" 2>&1 || { tail -n 20 "${tmp}/logs/kmeans.log"; exit 1; }

for split in ${splits}; do
  log "labels for ${split}"
  for rank in $(seq 0 $((nj - 1))); do
    OMP_NUM_THREADS=${shard_threads} python "${km_scripts}/dump_km_label.py" "${tmp}/feats" "${split}" "${tmp}/km.bin" \
      "${nj}" "${rank}" "${tmp}" > "${tmp}/logs/label_${split}_${rank}.log" 2>&1 &
  done
  wait_shards "${tmp}"/logs/label_"${split}"_*.log
  for rank in $(seq 0 $((nj - 1))); do cat "${tmp}/${split}_${rank}_${nj}.km"; done > "${tmp}/${split}.km"
  rm "${tmp}/${split}"_*_"${nj}".km
  expected=$(($(wc -l < "${manifest_dir}/${split}.tsv") - 1))
  got=$(wc -l < "${tmp}/${split}.km")
  [ "${expected}" -eq "${got}" ] || { log "error: ${split}.km has ${got} lines, ${manifest_dir}/${split}.tsv ${expected}"; exit 1; }
done
for i in $(seq 0 $((n_clusters - 1))); do echo "${i} 1"; done > "${tmp}/dict.km.txt"
rm -rf "${tmp}/feats"
trap - EXIT
rm -rf "${out_dir}"
mv "${tmp}" "${out_dir}"
log "wrote ${out_dir}"
