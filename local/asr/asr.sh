#!/usr/bin/env bash
# Downstream ASR for one SSL upstream with ESPnet's own entry points, on Kaldi data dirs:
#   sentencepiece BPE + token list (espnet2.bin.tokenize_text), shapes (asr_train --collect_stats),
#   training (espnet2.bin.asr_train), decoding (espnet2.bin.asr_inference), scoring (WER/CER).
#
#   local/asr/asr.sh --tag interleaved --upstream-dir exp/upstreams/interleaved
#
# --upstream-dir holds the exports of `python -m fairseq_plugin.export` (hubert.pt, s3prl.pt);
# the config is any ESPnet ASR config whose "<- yours" lines local/asr/make_config.py fills in.
#
# Shared between upstreams (done once, in <asr-dir>/bpe<nbpe> and stats_bpe<nbpe>): the BPE
# model and the shape files. Each step is skipped when its output exists, so a killed run
# redoes only what was unfinished (ESPnet's trainer resumes from its own checkpoint).
set -euo pipefail

tag=""
upstream_dir=""
config=conf/asr/tiny_s3prl.yaml
datadir=data
train_set=train
valid_set=dev
test_set=test
asr_dir=exp/asr
nbpe=30
train_args=""   # extra arguments for espnet2.bin.asr_train, e.g. "--max_epoch 2"
. utils/parse_options.sh

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (asr.sh) $*"; }
[ -n "${tag}" ] && [ -n "${upstream_dir}" ] || { log "error: --tag and --upstream-dir are required"; exit 1; }

bpe_dir=${asr_dir}/bpe${nbpe}
stats_dir=${asr_dir}/stats_bpe${nbpe}
exp=${asr_dir}/${tag}
mkdir -p "${asr_dir}" "${exp}"
# What a killed run left half-done: its temporary dirs (finished steps were renamed into place).
rm -rf "${asr_dir}"/.bpe.tmp-* "${asr_dir}"/.stats.tmp-* "${exp}"/.decode.tmp-*
bpe_opts=(--token_type bpe --bpemodel "${bpe_dir}/bpe.model" --token_list "${bpe_dir}/tokens.txt"
          --cleaner none --g2p none --non_linguistic_symbols none)
data_opts=(--train_data_path_and_name_and_type "${datadir}/${train_set}/wav.scp,speech,sound"
           --train_data_path_and_name_and_type "${datadir}/${train_set}/text,text,text"
           --valid_data_path_and_name_and_type "${datadir}/${valid_set}/wav.scp,speech,sound"
           --valid_data_path_and_name_and_type "${datadir}/${valid_set}/text,text,text")

log "ESPnet config for ${tag} (${config}) -> ${exp}/train.yaml"
python -m local.asr.make_config "${config}" "${upstream_dir}" "${exp}/train.yaml"

if [ ! -f "${bpe_dir}/tokens.txt" ]; then
  log "sentencepiece BPE (${nbpe}) on ${datadir}/${train_set}/text -> ${bpe_dir}"
  tmp=$(mktemp -d "${asr_dir}/.bpe.tmp-XXXXXX")
  cut -d' ' -f2- "${datadir}/${train_set}/text" > "${tmp}/train.txt"
  python -c "import sentencepiece as spm, sys; spm.SentencePieceTrainer.train(input=sys.argv[1], \
model_prefix=sys.argv[2], vocab_size=int(sys.argv[3]), model_type='bpe', character_coverage=1.0, \
input_sentence_size=100000000, minloglevel=2)" "${tmp}/train.txt" "${tmp}/bpe" "${nbpe}"
  python -m espnet2.bin.tokenize_text --token_type bpe --bpemodel "${tmp}/bpe.model" --field 2- \
    --cleaner none --g2p none --write_vocabulary true --add_symbol "<blank>:0" --add_symbol "<unk>:1" \
    --add_symbol "<sos/eos>:-1" --input "${datadir}/${train_set}/text" --output "${tmp}/tokens.txt"
  rm -rf "${bpe_dir}"
  mv "${tmp}" "${bpe_dir}"
fi

if [ ! -f "${stats_dir}/train/text_shape.bpe" ]; then
  log "shape files (asr_train --collect_stats) -> ${stats_dir}"
  tmp=$(mktemp -d "${asr_dir}/.stats.tmp-XXXXXX")
  python -m espnet2.bin.asr_train --collect_stats true --config "${exp}/train.yaml" --ngpu 0 \
    --use_preprocessor true "${bpe_opts[@]}" "${data_opts[@]}" \
    --train_shape_file "${datadir}/${train_set}/wav.scp" --valid_shape_file "${datadir}/${valid_set}/wav.scp" \
    --output_dir "${tmp}" > "${tmp}/collect_stats.log" 2>&1 || { tail -n 20 "${tmp}/collect_stats.log"; exit 1; }
  for split in train valid; do mv "${tmp}/${split}/text_shape" "${tmp}/${split}/text_shape.bpe"; done
  rm -rf "${stats_dir}"
  mv "${tmp}" "${stats_dir}"
fi

log "training ${tag} (espnet2.bin.asr_train) -> ${exp}"
python -m espnet2.bin.asr_train --config "${exp}/train.yaml" --ngpu 0 --resume true \
  --use_preprocessor true "${bpe_opts[@]}" "${data_opts[@]}" \
  --train_shape_file "${stats_dir}/train/speech_shape" --train_shape_file "${stats_dir}/train/text_shape.bpe" \
  --valid_shape_file "${stats_dir}/valid/speech_shape" --valid_shape_file "${stats_dir}/valid/text_shape.bpe" \
  --fold_length 80000 --fold_length 150 --output_dir "${exp}" ${train_args} > "${exp}/train.log" 2>&1 \
  || { tail -n 30 "${exp}/train.log"; exit 1; }

decode=${exp}/decode_${test_set}
if [ ! -f "${decode}/score.json" ]; then
  log "decoding ${datadir}/${test_set} with ${tag} (espnet2.bin.asr_inference, CTC greedy)"
  # The model ESPnet averaged over its best epochs by the config's best_model_criterion.
  model_file=$(ls "${exp}"/valid.*.ave.pth | head -n 1)
  tmp=$(mktemp -d "${exp}/.decode.tmp-XXXXXX")
  python -m espnet2.bin.asr_inference --ngpu 0 --batch_size 1 --nbest 1 --beam_size 1 --ctc_weight 1.0 \
    --lm_weight 0.0 --asr_train_config "${exp}/config.yaml" --asr_model_file "${model_file}" \
    --data_path_and_name_and_type "${datadir}/${test_set}/wav.scp,speech,sound" \
    --key_file "${datadir}/${test_set}/wav.scp" --output_dir "${tmp}" > "${tmp}/decode.log" 2>&1 \
    || { tail -n 30 "${tmp}/decode.log"; exit 1; }
  python -m local.asr.score --ref "${datadir}/${test_set}/text" --hyp "${tmp}/1best_recog/text" \
    --out "${tmp}/score.json"
  rm -rf "${decode}"
  mv "${tmp}" "${decode}"
fi
cat "${decode}/score.json"; echo
