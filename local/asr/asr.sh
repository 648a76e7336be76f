#!/usr/bin/env bash
# Downstream ASR for one SSL upstream with ESPnet's own entry points, on Kaldi data dirs, in the
# steps of ESPnet's egs2/TEMPLATE/asr1/asr.sh (stages 5, 10, 11, 12, 13 there):
#   sentencepiece (spm_train's options) and its vocabulary as the token list, shapes (asr_train
#   --collect_stats), training (espnet2.bin.asr_train), decoding (espnet2.bin.asr_inference with an
#   inference config), scoring with sclite (score_{cer,wer,ter}/result.txt) and RESULTS.md.
#
#   local/asr/asr.sh --tag interleaved --upstream-dir exp/upstreams/interleaved [--ngpu 1]
#
# --upstream-dir holds the exports of `python -m fairseq_plugin.export` (hubert.pt, s3prl.pt);
# the config is any ESPnet ASR config whose "<- yours" lines local/asr/make_config.py fills in.
# With --feats-dir (the upstream's feature store, `python -m local.feature_store`) the model trains
# and decodes on the stored hidden states, ESPnet's extracted-feature route (feats.scp, kaldi_ark,
# `input_size` in the config), instead of running the frozen upstream on every batch.
#
# Dirs are named as ESPnet's asr.sh names them (under --asr-dir), plus a hash of the training text:
#   bpe_<bpemode><nbpe>_<text hash>/, asr_stats_bpe_<bpemode><nbpe>_<text hash>/   shared by upstreams
#   asr_stats_extracted_<tag>_bpe_<bpemode><nbpe>_<text hash>/   shapes of one upstream's stored features
#   asr_<config>_<tag>_bpe<nbpe>/                                 training (train.log), RESULTS.md
#   asr_.../<inference config>_asr_model_<model>/<test set>/     text, logdir/asr_inference.*.log,
#                                                                 score_{cer,wer,ter}/result.txt
# Each step keeps a stamp of what made its output (local/stamp.py: file hashes and options) and is
# skipped only when that stamp is current, so a changed config, upstream or data dir reruns what
# it makes stale; a killed run redoes only what was unfinished (ESPnet resumes its own training).
# Jobs run through cmd.sh's ${train_cmd}/${cuda_cmd}/${decode_cmd}, each with its log. Runs for
# several upstreams may go side by side: the steps they share (BPE, raw-audio shapes) take a lock.
set -euo pipefail

tag=""
upstream_dir=""
config=conf/asr/tiny_s3prl.yaml
inference_config=conf/asr/decode_ctc_greedy.yaml  # espnet2.bin.asr_inference options (ESPnet's --inference_config)
inference_nj=1  # decoding jobs (ESPnet's --inference_nj): the test set split into this many
datadir=data
train_set=train
valid_set=dev
test_set=test
asr_dir=exp/asr
nbpe=30
bpemode=bpe     # sentencepiece model type: unigram (ESPnet's asr.sh default) or bpe
bpe_nlsyms=""   # symbols sentencepiece keeps whole (its --user_defined_symbols), comma-separated
ngpu=0          # GPUs for training (ESPnet's own multi-GPU processes when > 1); decoding uses one
train_args=""   # extra arguments for espnet2.bin.asr_train, e.g. "--max_epoch 2"
feats_dir=""    # the upstream's stored hidden states (<dir>/<split>/feats.scp); empty: raw audio through the config's front end
score_opts=""   # extra sclite options (ESPnet's --score_opts)
. utils/parse_options.sh
. ./cmd.sh
# Debian's sctk keeps sclite out of PATH (its `sctk` wrapper runs it); ESPnet's tools/ put it in PATH.
[ -d /usr/lib/sctk/bin ] && PATH=${PATH}:/usr/lib/sctk/bin

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (asr.sh) $*"; }
key() { python -m local.stamp "$@"; }
current() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }  # current STAMP KEY
[ -n "${tag}" ] && [ -n "${upstream_dir}" ] || { log "error: --tag and --upstream-dir are required"; exit 1; }

case "${bpemode}" in unigram|bpe) ;; *) log "error: --bpemode ${bpemode}: unigram or bpe"; exit 1;; esac

text_hash=$(sha256sum "${datadir}/${train_set}/text" | cut -c1-8)
bpe_dir=${asr_dir}/bpe_${bpemode}${nbpe}_${text_hash}
stats_dir=${asr_dir}/asr_stats_bpe_${bpemode}${nbpe}_${text_hash}
# speech <split>: the split's speech as ESPnet's data loader takes it (path,speech,type)
speech() { echo "${datadir}/$1/wav.scp,speech,sound"; }
fold_length=80000  # ESPnet's asr.sh: 5 s of 16 kHz samples per length unit of a folded batch
config_opts=()
feats_keys=()
if [ -n "${feats_dir}" ]; then
  for split in "${train_set}" "${valid_set}" "${test_set}"; do
    [ -f "${feats_dir}/${split}/.stamp.json" ] || { log "error: ${feats_dir}/${split}: no stored features (python -m local.feature_store)"; exit 1; }
    feats_keys+=(--file "feats_${split}=${feats_dir}/${split}/.stamp.json")
  done
  speech() { echo "${feats_dir}/$1/feats.scp,speech,kaldi_ark"; }
  fold_length=250  # the same 5 s, in the upstream's 50 Hz frames
  stats_dir=${asr_dir}/asr_stats_extracted_${tag}_bpe_${bpemode}${nbpe}_${text_hash}
  config_opts=(--input-size "$(cat "${feats_dir}/${train_set}/feats_dim")")
fi
exp=${asr_dir}/asr_$(basename "${config}" .yaml)_${tag}_bpe${nbpe}
ngpu_one=$(( ngpu > 0 ? 1 : 0 ))   # stats and decoding run in one process
mkdir -p "${asr_dir}"
# What a killed run left half-done: its temporary dirs (finished steps were renamed into place); those of
# the steps runs share go under the lock below, since a run beside this one may be making them.
stats_tmp=.$(basename "${stats_dir}").tmp-
rm -rf "${asr_dir}/.train.yaml.tmp-${tag}-"* "${exp}"/*_asr_model_*/.decode.tmp-* "${exp}"/*_asr_model_*/*/.score.tmp-*
# Stage 1's stamp says where the audio came from (wav.scp paths alone do not).
prepared=()
[ -f "${datadir}/.prepared.json" ] && prepared=(--file "prepared=${datadir}/.prepared.json")
bpe_opts=(--token_type bpe --bpemodel "${bpe_dir}/bpe.model" --token_list "${bpe_dir}/tokens.txt"
          --cleaner none --g2p none --non_linguistic_symbols none)
data_opts=(--train_data_path_and_name_and_type "$(speech "${train_set}")"
           --train_data_path_and_name_and_type "${datadir}/${train_set}/text,text,text"
           --valid_data_path_and_name_and_type "$(speech "${valid_set}")"
           --valid_data_path_and_name_and_type "${datadir}/${valid_set}/text,text,text")

log "ESPnet config for ${tag} (${config}) -> ${exp}/train.yaml"
train_yaml=$(mktemp "${asr_dir}/.train.yaml.tmp-${tag}-XXXXXX")
python -m local.asr.make_config "${config}" "${upstream_dir}" "${train_yaml}" "${config_opts[@]}"

# Runs side by side make the shared BPE and raw-audio shapes once: the first takes the lock, the rest wait.
exec 9> "${asr_dir}/.shared.lock"
flock 9
rm -rf "${asr_dir}"/.bpe.tmp-* "${asr_dir}/${stats_tmp}"*
bpe_key=$(key --file text="${datadir}/${train_set}/text" --value nbpe="${nbpe}" --value bpemode="${bpemode}" \
  --value bpe_nlsyms="${bpe_nlsyms}")
if current "${bpe_dir}/.stamp.json" "${bpe_key}"; then
  log "BPE ${bpe_dir} is up to date"
else
  log "sentencepiece ${bpemode} (${nbpe}) on ${datadir}/${train_set}/text -> ${bpe_dir}"
  tmp=$(mktemp -d "${asr_dir}/.bpe.tmp-XXXXXX")
  cut -f 2- -d" " "${datadir}/${train_set}/text" > "${tmp}/train.txt"
  spm_opts=()
  [ -n "${bpe_nlsyms}" ] && spm_opts=(--user_defined_symbols="${bpe_nlsyms}")
  # spm_train's own options, as ESPnet's asr.sh gives them (local/asr/spm_train.py: spm_train in Python)
  ${train_cmd} "${tmp}/log/spm_train.log" python -m local.asr.spm_train --input="${tmp}/train.txt" \
    --vocab_size="${nbpe}" --model_type="${bpemode}" --model_prefix="${tmp}/bpe" --character_coverage=1.0 \
    --input_sentence_size=100000000 "${spm_opts[@]}" || { tail -n 20 "${tmp}/log/spm_train.log"; exit 1; }
  # The token list from sentencepiece's vocabulary, as ESPnet's asr.sh writes it: <blank>, <unk>,
  # the pieces without sentencepiece's <unk> <s> </s>, then <sos/eos>.
  { echo "<blank>"; echo "<unk>"; awk 'NR > 3 { print $1 }' "${tmp}/bpe.vocab"; echo "<sos/eos>"; } > "${tmp}/tokens.txt"
  echo "${bpe_key}" > "${tmp}/.stamp.json"
  rm -rf "${bpe_dir}"
  mv "${tmp}" "${bpe_dir}"
fi

[ -z "${feats_dir}" ] || flock -u 9  # shapes of stored features are this upstream's own
stats_key=$(key --file tokens="${bpe_dir}/.stamp.json" "${prepared[@]}" "${feats_keys[@]}" \
  --file train="${datadir}/${train_set}" --file valid="${datadir}/${valid_set}")
if current "${stats_dir}/.stamp.json" "${stats_key}"; then
  log "shape files ${stats_dir} are up to date"
else
  log "shape files (asr_train --collect_stats) -> ${stats_dir}"
  tmp=$(mktemp -d "${asr_dir}/${stats_tmp}XXXXXX")
  ${train_cmd} "${tmp}/logdir/stats.1.log" python -m espnet2.bin.asr_train --collect_stats true \
    --config "${train_yaml}" --ngpu "${ngpu_one}" --use_preprocessor true "${bpe_opts[@]}" "${data_opts[@]}" \
    --train_shape_file "${datadir}/${train_set}/wav.scp" --valid_shape_file "${datadir}/${valid_set}/wav.scp" \
    --output_dir "${tmp}" || { tail -n 20 "${tmp}/logdir/stats.1.log"; exit 1; }
  for split in train valid; do mv "${tmp}/${split}/text_shape" "${tmp}/${split}/text_shape.bpe"; done
  echo "${stats_key}" > "${tmp}/.stamp.json"
  rm -rf "${stats_dir}"
  mv "${tmp}" "${stats_dir}"
fi
flock -u 9

train_key=$(key --file config="${train_yaml}" --file upstream="${upstream_dir}" --file tokens="${bpe_dir}/.stamp.json" \
  --file stats="${stats_dir}/.stamp.json" "${prepared[@]}" "${feats_keys[@]}" --file train="${datadir}/${train_set}" \
  --file valid="${datadir}/${valid_set}" --value train_args="${train_args}")
if current "${exp}/.stamp.json" "${train_key}"; then
  log "training ${tag}: ${exp} is up to date"
  mv "${train_yaml}" "${exp}/train.yaml"
else
  # A dir trained on other inputs starts afresh; one killed on these inputs resumes (.inputs.json).
  if ! current "${exp}/.inputs.json" "${train_key}"; then
    rm -rf "${exp}"
    mkdir -p "${exp}"
    echo "${train_key}" > "${exp}/.inputs.json"
  fi
  mv "${train_yaml}" "${exp}/train.yaml"
  dist_opts=()
  [ "${ngpu}" -gt 1 ] && dist_opts=(--multiprocessing_distributed true)  # one process per GPU, as ESPnet's asr.sh
  log "training ${tag} (espnet2.bin.asr_train, ngpu ${ngpu}) -> ${exp} (log: train.log)"
  # shellcheck disable=SC2086
  ${cuda_cmd} --gpu "${ngpu}" "${exp}/train.log" python -m espnet2.bin.asr_train --config "${exp}/train.yaml" \
    --ngpu "${ngpu}" "${dist_opts[@]}" --resume true \
    --use_preprocessor true "${bpe_opts[@]}" "${data_opts[@]}" \
    --train_shape_file "${stats_dir}/train/speech_shape" --train_shape_file "${stats_dir}/train/text_shape.bpe" \
    --valid_shape_file "${stats_dir}/valid/speech_shape" --valid_shape_file "${stats_dir}/valid/text_shape.bpe" \
    --fold_length "${fold_length}" --fold_length 150 --output_dir "${exp}" ${train_args} \
    || { tail -n 30 "${exp}/train.log"; exit 1; }
  echo "${train_key}" > "${exp}/.stamp.json"
fi

# The model ESPnet averaged over its best epochs by the config's best_model_criterion, and the
# decoding dir named as ESPnet's asr.sh names it: <inference config>_asr_model_<model>/<test set>.
model_file=$(ls "${exp}"/valid.*.ave.pth | head -n 1)
inference_tag=$(basename "${inference_config}" .yaml)_asr_model_$(basename "${model_file}" .pth)
decode=${exp}/${inference_tag}/${test_set}
decode_key=$(key --file model="${model_file}" --file train="${exp}/.stamp.json" \
  --file inference_config="${inference_config}" "${prepared[@]}" "${feats_keys[@]}" --file test="${datadir}/${test_set}")
python -m local.asr.check_inference "${exp}/config.yaml" "${inference_config}"
if current "${decode}/.stamp.json" "${decode_key}"; then
  log "decoding ${decode} is up to date"
else
  log "decoding ${datadir}/${test_set} with ${tag} (espnet2.bin.asr_inference --config ${inference_config}," \
    "${inference_nj} jobs) -> ${decode}"
  mkdir -p "$(dirname "${decode}")"
  tmp=$(utils/job_safe_mktemp.sh "$(dirname "${decode}")/.decode.tmp-XXXXXX")  # its path goes to JOB=1:N jobs
  logdir=${tmp}/logdir
  mkdir -p "${logdir}"
  # The key file split into inference_nj contiguous parts (Kaldi's split_scp.pl), one job each.
  n_utts=$(wc -l < "${datadir}/${test_set}/wav.scp")
  nj=$(( n_utts < inference_nj ? n_utts : inference_nj ))
  awk -v nj="${nj}" -v n="${n_utts}" -v dir="${logdir}" \
    '{ print > (dir "/keys." (int((NR - 1) * nj / n) + 1) ".scp") }' "${datadir}/${test_set}/wav.scp"
  ${decode_cmd} --gpu "${ngpu_one}" JOB=1:"${nj}" "${logdir}/asr_inference.JOB.log" \
    python -m espnet2.bin.asr_inference --batch_size 1 --ngpu "${ngpu_one}" \
    --data_path_and_name_and_type "$(speech "${test_set}")" \
    --key_file "${logdir}/keys.JOB.scp" --asr_train_config "${exp}/config.yaml" \
    --asr_model_file "${model_file}" --output_dir "${logdir}/output.JOB" --config "${inference_config}" \
    || { tail -n 30 "${logdir}"/asr_inference.*.log; exit 1; }
  # The jobs' outputs concatenated, as ESPnet's asr.sh does.
  for f in token token_int score text; do
    if [ -f "${logdir}/output.1/1best_recog/${f}" ]; then
      for i in $(seq "${nj}"); do cat "${logdir}/output.${i}/1best_recog/${f}"; done | LC_ALL=C sort -k1 > "${tmp}/${f}"
    fi
  done
  echo "${decode_key}" > "${tmp}/.stamp.json"
  rm -rf "${decode}"
  mv "${tmp}" "${decode}"
fi

# Scoring with sclite, as ESPnet's asr.sh stage 13: reference and hypothesis tokenised by
# espnet2.bin.tokenize_text into characters (CER), words (WER) and BPE pieces (TER), each line
# ended by "(<speaker>-<utt>)" (local/asr/trn.py), then
# `sclite -r ref.trn trn -h hyp.trn trn -i rm -o all stdout > score_<type>/result.txt`.
score_key=$(key --file decode="${decode}/.stamp.json" --file text="${datadir}/${test_set}/text" \
  --file utt2spk="${datadir}/${test_set}/utt2spk" --file bpe="${bpe_dir}/.stamp.json" --value score_opts="${score_opts}")
if current "${decode}/.score.stamp.json" "${score_key}"; then
  log "scores in ${decode}/score_{cer,wer,ter} are up to date"
else
  log "scoring ${decode} with sclite -> score_{cer,wer,ter}/result.txt"
  command -v sclite > /dev/null || { log "error: no sclite: install Debian's sctk (local/setup_env.sh does)"; exit 1; }
  rm -f "${decode}/.score.stamp.json"
  tmp=$(mktemp -d "${decode}/.score.tmp-XXXXXX")
  python -m local.asr.trn --ref "${datadir}/${test_set}/text" --hyp "${decode}/text" \
    --utt2spk "${datadir}/${test_set}/utt2spk" --bpemodel "${bpe_dir}/bpe.model" --out-dir "${tmp}"
  for type in cer wer ter; do
    dir=${tmp}/score_${type}
    # shellcheck disable=SC2086
    sclite ${score_opts} -r "${dir}/ref.trn" trn -h "${dir}/hyp.trn" trn -i rm -o all stdout > "${dir}/result.txt"
    log "${type}: $(grep -m 1 Sum/Avg "${dir}/result.txt" | tr -s " ")"
  done
  for type in cer wer ter; do
    rm -rf "${decode}/score_${type}"
    mv "${tmp}/score_${type}" "${decode}/score_${type}"
  done
  rmdir "${tmp}"
  echo "${score_key}" > "${decode}/.score.stamp.json"
fi

# The results in Markdown, as ESPnet's show_asr_result.sh writes them after scoring.
python -m local.asr.show_results "${exp}" --out "${exp}/RESULTS.md"
cat "${exp}/RESULTS.md"
