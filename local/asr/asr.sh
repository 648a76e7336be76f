#!/usr/bin/env bash
# Downstream ASR for one SSL upstream with ESPnet's own entry points, on Kaldi data dirs:
#   sentencepiece BPE + token list (espnet2.bin.tokenize_text), shapes (asr_train --collect_stats),
#   training (espnet2.bin.asr_train), decoding (espnet2.bin.asr_inference), scoring (WER/CER).
#
#   local/asr/asr.sh --tag interleaved --upstream-dir exp/upstreams/interleaved [--ngpu 1]
#
# --upstream-dir holds the exports of `python -m fairseq_plugin.export` (hubert.pt, s3prl.pt);
# the config is any ESPnet ASR config whose "<- yours" lines local/asr/make_config.py fills in.
#
# Dirs are named as ESPnet's asr.sh names them (under --asr-dir):
#   bpe<nbpe>_<text hash>/, asr_stats_bpe<nbpe>_<text hash>/   shared by upstreams on the same text
#   asr_<config>_<tag>_bpe<nbpe>/                              training
#   asr_.../decode_<inference config|ctc_greedy>_<model>/<test set>/score.json
# Each step keeps a stamp of what made its output (local/stamp.py: file hashes and options) and is
# skipped only when that stamp is current, so a changed config, upstream or data dir reruns what
# it makes stale; a killed run redoes only what was unfinished (ESPnet resumes its own training).
set -euo pipefail

tag=""
upstream_dir=""
config=conf/asr/tiny_s3prl.yaml
inference_config=""   # an espnet2.bin.asr_inference config; empty: CTC greedy search
datadir=data
train_set=train
valid_set=dev
test_set=test
asr_dir=exp/asr
nbpe=30
ngpu=0          # GPUs for training (ESPnet's own multi-GPU processes when > 1); decoding uses one
train_args=""   # extra arguments for espnet2.bin.asr_train, e.g. "--max_epoch 2"
. utils/parse_options.sh

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (asr.sh) $*"; }
key() { python -m local.stamp "$@"; }
current() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }  # current STAMP KEY
[ -n "${tag}" ] && [ -n "${upstream_dir}" ] || { log "error: --tag and --upstream-dir are required"; exit 1; }

text_hash=$(sha256sum "${datadir}/${train_set}/text" | cut -c1-8)
bpe_dir=${asr_dir}/bpe${nbpe}_${text_hash}
stats_dir=${asr_dir}/asr_stats_bpe${nbpe}_${text_hash}
exp=${asr_dir}/asr_$(basename "${config}" .yaml)_${tag}_bpe${nbpe}
ngpu_one=$(( ngpu > 0 ? 1 : 0 ))   # stats and decoding run in one process
mkdir -p "${asr_dir}"
# What a killed run left half-done: its temporary dirs (finished steps were renamed into place).
rm -rf "${asr_dir}"/.bpe.tmp-* "${asr_dir}"/.stats.tmp-* "${asr_dir}"/.train.yaml.tmp-* "${exp}"/decode_*/.decode.tmp-*
# Stage 1's stamp says where the audio came from (wav.scp paths alone do not).
prepared=()
[ -f "${datadir}/.prepared.json" ] && prepared=(--file "prepared=${datadir}/.prepared.json")
bpe_opts=(--token_type bpe --bpemodel "${bpe_dir}/bpe.model" --token_list "${bpe_dir}/tokens.txt"
          --cleaner none --g2p none --non_linguistic_symbols none)
data_opts=(--train_data_path_and_name_and_type "${datadir}/${train_set}/wav.scp,speech,sound"
           --train_data_path_and_name_and_type "${datadir}/${train_set}/text,text,text"
           --valid_data_path_and_name_and_type "${datadir}/${valid_set}/wav.scp,speech,sound"
           --valid_data_path_and_name_and_type "${datadir}/${valid_set}/text,text,text")

log "ESPnet config for ${tag} (${config}) -> ${exp}/train.yaml"
train_yaml=$(mktemp "${asr_dir}/.train.yaml.tmp-XXXXXX")
python -m local.asr.make_config "${config}" "${upstream_dir}" "${train_yaml}"

bpe_key=$(key --file text="${datadir}/${train_set}/text" --value nbpe="${nbpe}")
if current "${bpe_dir}/.stamp.json" "${bpe_key}"; then
  log "BPE ${bpe_dir} is up to date"
else
  log "sentencepiece BPE (${nbpe}) on ${datadir}/${train_set}/text -> ${bpe_dir}"
  tmp=$(mktemp -d "${asr_dir}/.bpe.tmp-XXXXXX")
  cut -d' ' -f2- "${datadir}/${train_set}/text" > "${tmp}/train.txt"
  python -c "import sentencepiece as spm, sys; spm.SentencePieceTrainer.train(input=sys.argv[1], \
model_prefix=sys.argv[2], vocab_size=int(sys.argv[3]), model_type='bpe', character_coverage=1.0, \
input_sentence_size=100000000, minloglevel=2)" "${tmp}/train.txt" "${tmp}/bpe" "${nbpe}"
  python -m espnet2.bin.tokenize_text --token_type bpe --bpemodel "${tmp}/bpe.model" --field 2- \
    --cleaner none --g2p none --write_vocabulary true --add_symbol "<blank>:0" --add_symbol "<unk>:1" \
    --add_symbol "<sos/eos>:-1" --input "${datadir}/${train_set}/text" --output "${tmp}/tokens.txt"
  echo "${bpe_key}" > "${tmp}/.stamp.json"
  rm -rf "${bpe_dir}"
  mv "${tmp}" "${bpe_dir}"
fi

stats_key=$(key --file tokens="${bpe_dir}/.stamp.json" "${prepared[@]}" \
  --file train="${datadir}/${train_set}" --file valid="${datadir}/${valid_set}")
if current "${stats_dir}/.stamp.json" "${stats_key}"; then
  log "shape files ${stats_dir} are up to date"
else
  log "shape files (asr_train --collect_stats) -> ${stats_dir}"
  tmp=$(mktemp -d "${asr_dir}/.stats.tmp-XXXXXX")
  python -m espnet2.bin.asr_train --collect_stats true --config "${train_yaml}" --ngpu "${ngpu_one}" \
    --use_preprocessor true "${bpe_opts[@]}" "${data_opts[@]}" \
    --train_shape_file "${datadir}/${train_set}/wav.scp" --valid_shape_file "${datadir}/${valid_set}/wav.scp" \
    --output_dir "${tmp}" > "${tmp}/collect_stats.log" 2>&1 || { tail -n 20 "${tmp}/collect_stats.log"; exit 1; }
  for split in train valid; do mv "${tmp}/${split}/text_shape" "${tmp}/${split}/text_shape.bpe"; done
  echo "${stats_key}" > "${tmp}/.stamp.json"
  rm -rf "${stats_dir}"
  mv "${tmp}" "${stats_dir}"
fi

train_key=$(key --file config="${train_yaml}" --file upstream="${upstream_dir}" --file tokens="${bpe_dir}/.stamp.json" \
  --file stats="${stats_dir}/.stamp.json" "${prepared[@]}" --file train="${datadir}/${train_set}" \
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
  log "training ${tag} (espnet2.bin.asr_train, ngpu ${ngpu}) -> ${exp}"
  python -m espnet2.bin.asr_train --config "${exp}/train.yaml" --ngpu "${ngpu}" "${dist_opts[@]}" --resume true \
    --use_preprocessor true "${bpe_opts[@]}" "${data_opts[@]}" \
    --train_shape_file "${stats_dir}/train/speech_shape" --train_shape_file "${stats_dir}/train/text_shape.bpe" \
    --valid_shape_file "${stats_dir}/valid/speech_shape" --valid_shape_file "${stats_dir}/valid/text_shape.bpe" \
    --fold_length 80000 --fold_length 150 --output_dir "${exp}" ${train_args} > "${exp}/train.log" 2>&1 \
    || { tail -n 30 "${exp}/train.log"; exit 1; }
  echo "${train_key}" > "${exp}/.stamp.json"
fi

# The model ESPnet averaged over its best epochs by the config's best_model_criterion.
model_file=$(ls "${exp}"/valid.*.ave.pth | head -n 1)
if [ -n "${inference_config}" ]; then
  decode_opts=(--config "${inference_config}")
  decode_key_opts=(--file inference_config="${inference_config}")
  decode=${exp}/decode_$(basename "${inference_config}" .yaml)_$(basename "${model_file}" .pth)/${test_set}
else
  decode_opts=(--batch_size 1 --nbest 1 --beam_size 1 --ctc_weight 1.0 --lm_weight 0.0)
  decode_key_opts=(--value inference="${decode_opts[*]}")
  decode=${exp}/decode_ctc_greedy_$(basename "${model_file}" .pth)/${test_set}
fi
decode_key=$(key --file model="${model_file}" --file train="${exp}/.stamp.json" "${decode_key_opts[@]}" \
  "${prepared[@]}" --file test="${datadir}/${test_set}")
if current "${decode}/.stamp.json" "${decode_key}"; then
  log "decoding ${decode} is up to date"
else
  log "decoding ${datadir}/${test_set} with ${tag} (espnet2.bin.asr_inference) -> ${decode}"
  mkdir -p "$(dirname "${decode}")"
  tmp=$(mktemp -d "$(dirname "${decode}")/.decode.tmp-XXXXXX")
  python -m espnet2.bin.asr_inference --ngpu "${ngpu_one}" "${decode_opts[@]}" \
    --asr_train_config "${exp}/config.yaml" --asr_model_file "${model_file}" \
    --data_path_and_name_and_type "${datadir}/${test_set}/wav.scp,speech,sound" \
    --key_file "${datadir}/${test_set}/wav.scp" --output_dir "${tmp}" > "${tmp}/decode.log" 2>&1 \
    || { tail -n 30 "${tmp}/decode.log"; exit 1; }
  python -m local.asr.score --ref "${datadir}/${test_set}/text" --hyp "${tmp}/1best_recog/text" \
    --out "${tmp}/score.json"
  echo "${decode_key}" > "${tmp}/.stamp.json"
  rm -rf "${decode}"
  mv "${tmp}" "${decode}"
fi
cat "${decode}/score.json"; echo
