"""Both ESPnet routes of espnet_recipe/, as shipped: ESPnet builds the ASR model with the
exported student, trains on the corpus with the loss going down, decodes with an inference config
and scores with sclite, in ESPnet's asr.sh layout."""
from __future__ import annotations

import re
from pathlib import Path

import editdistance
import pytest
import sentencepiece.sentencepiece_model_pb2 as spm_model
import yaml

from fairseq_plugin.export import export
from local.asr.check_inference import problem
from local.asr.score import sum_avg
from local.data.kaldi import read_dict
from tests.conftest import REPO, run


def epoch_losses(log: str) -> list[float]:
    return [float(m) for m in re.findall(r"\d+epoch results: \[train\].*? loss=([\d.]+)", log)]


def word_errors(ref: Path, hyp: Path) -> float:
    """WER (%) counted here, apart from sclite: edits over reference words, the whole set."""
    ref_text, hyp_text = read_dict(ref), read_dict(hyp)
    edits = sum(editdistance.eval(r.split(), hyp_text.get(utt, "").split()) for utt, r in ref_text.items())
    return 100.0 * edits / sum(len(r.split()) for r in ref_text.values())


# (config, bpemode, inference config, the model ESPnet averages by the config's best_model_criterion)
ROUTES = [("train_asr_student_s3prl.yaml", "bpe", "decode_asr_beam4", "valid.acc.ave"),  # CTC 0.3 + attention
          ("train_asr_student_hubert_encoder.yaml", "unigram", "decode_ctc_greedy", "valid.loss.ave")]  # CTC only


@pytest.mark.slow
@pytest.mark.parametrize("config,bpemode,inference,model", ROUTES)
def test_student_trains_in_espnet(tiny_corpus, tiny_student, tmp_path, config, bpemode, inference, model):
    export(tiny_student, tmp_path / "export", ["fairseq", "s3prl"])
    data, asr_dir = tiny_corpus / "data", tmp_path / "asr"
    run(["bash", "local/asr/asr.sh", "--tag", "student", "--upstream-dir", str(tmp_path / "export"),
         "--config", str(REPO / "espnet_recipe/conf" / config), "--datadir", str(data),
         "--asr-dir", str(asr_dir), "--nbpe", "30", "--bpemode", bpemode,
         "--inference-config", str(REPO / f"conf/asr/{inference}.yaml"),
         # run-level settings for a few CPU steps; the model lines are the shipped ones
         "--train-args", "--batch_type folded --batch_size 4 --max_epoch 3 --num_workers 0 "
                         "--optim_conf lr=0.002 --scheduler_conf warmup_steps=2 --specaug none"])
    exp = asr_dir / f"asr_{config.removesuffix('.yaml')}_student_bpe30"  # ESPnet's naming
    losses = epoch_losses((exp / "train.log").read_text())
    assert len(losses) == 3 and losses[-1] < losses[0], losses

    # sentencepiece trained with --model_type <bpemode>, in a dir named after it, and the token list
    # built from its vocabulary as ESPnet's asr.sh builds it
    (bpe_dir,) = asr_dir.glob(f"bpe_{bpemode}30_*")
    proto = spm_model.ModelProto()
    proto.ParseFromString((bpe_dir / "bpe.model").read_bytes())
    assert spm_model.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type).lower() == bpemode
    assert proto.trainer_spec.vocab_size == 30 and proto.trainer_spec.character_coverage == 1.0
    pieces = [line.split("\t")[0] for line in (bpe_dir / "bpe.vocab").read_text().splitlines()]
    assert (bpe_dir / "tokens.txt").read_text().split("\n")[:-1] == ["<blank>", "<unk>", *pieces[3:], "<sos/eos>"]
    assert (bpe_dir / "log/spm_train.log").exists() and list(asr_dir.glob(f"asr_stats_bpe_{bpemode}30_*"))

    # decoded with the inference config, in the dir ESPnet names after it, one log per job
    decode = exp / f"{inference}_asr_model_{model}" / "test"
    assert (decode / "logdir/asr_inference.1.log").exists()
    assert len(read_dict(decode / "text")) == 20
    # scored by sclite: ESPnet's trn files and result.txt, whose WER is the one counted apart
    ids = [f"({spk}-{utt})" for utt, spk in read_dict(data / "test/utt2spk").items()]
    for kind in ("cer", "wer", "ter"):
        for side in ("ref", "hyp"):
            trn = (decode / f"score_{kind}/{side}.trn").read_text().splitlines()
            assert [line.rpartition("\t")[2] for line in trn] == ids, trn[:2]
        summary = sum_avg(decode / f"score_{kind}/result.txt")
        assert summary["Snt"] == 20 and summary["Err"] >= 0
    wer = sum_avg(decode / "score_wer/result.txt")
    assert wer["Err"] == pytest.approx(word_errors(data / "test/text", decode / "text"), abs=0.05)

    # the report reads sclite's numbers; RESULTS.md as ESPnet's show_asr_result.sh writes it
    table = run(["python", "-m", "local.asr.report", str(asr_dir), "--exps", f"student={exp}",
                 "--inference", inference]).stdout
    row = next(line for line in table.splitlines() if line.startswith("| student |"))
    cer = sum_avg(decode / "score_cer/result.txt")
    assert row.split("|")[2:6] == [f" {wer['Err']:.1f} ", f" {cer['Err']:.1f} ", " 20 ",
                                   f" `{decode.relative_to(asr_dir)}` "]
    for results in (exp / "RESULTS.md", asr_dir / "RESULTS.md"):
        text = results.read_text()
        assert "- espnet2 version:" in text and "|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|" in text
        assert f"|{inference}_asr_model_{model}/test|20|{wer['Wrd']:.0f}|" in text


def test_joint_decoding_is_refused_for_a_model_without_a_decoder():
    """asr_inference would drop the missing decoder and beam-search CTC alone, weighted 0.3."""
    configs = {name: yaml.safe_load((REPO / path).read_text()) for name, path in [
        ("tiny", "conf/asr/tiny_s3prl.yaml"), ("joint", "espnet_recipe/conf/train_asr_student_s3prl.yaml"),
        ("greedy", "conf/asr/decode_ctc_greedy.yaml"), ("beam", "conf/asr/decode_asr_beam4.yaml")]}
    assert "has none" in problem(configs["tiny"], configs["beam"])
    assert problem(configs["tiny"], configs["greedy"]) is None
    assert problem(configs["joint"], configs["beam"]) is None
    proc = run(["python", "-m", "local.asr.check_inference", "conf/asr/tiny_s3prl.yaml",
                "conf/asr/decode_asr_beam4.yaml"], check=False)
    assert proc.returncode != 0 and "decode_ctc_greedy.yaml" in proc.stderr
