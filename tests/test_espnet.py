"""Both ESPnet routes of espnet_recipe/, as shipped: ESPnet builds the ASR model with the
exported student, trains on the corpus with the loss going down, decodes and scores."""
from __future__ import annotations

import json
import re

import pytest

from fairseq_plugin.export import export
from tests.conftest import REPO, run


def epoch_losses(log: str) -> list[float]:
    return [float(m) for m in re.findall(r"\d+epoch results: \[train\].*? loss=([\d.]+)", log)]


@pytest.mark.parametrize("config", ["train_asr_student_s3prl.yaml", "train_asr_student_hubert_encoder.yaml"])
def test_student_trains_in_espnet(tiny_corpus, tiny_student, tmp_path, config):
    export(tiny_student, tmp_path / "export", ["fairseq", "s3prl"])
    run(["bash", "local/asr/asr.sh", "--tag", "student", "--upstream-dir", str(tmp_path / "export"),
         "--config", str(REPO / "espnet_recipe/conf" / config), "--datadir", str(tiny_corpus / "data"),
         "--asr-dir", str(tmp_path / "asr"), "--nbpe", "30",
         # run-level settings for a few CPU steps; the model lines are the shipped ones
         "--train-args", "--batch_type folded --batch_size 4 --max_epoch 3 --num_workers 0 "
                         "--optim_conf lr=0.002 --scheduler_conf warmup_steps=2 --specaug none"])
    exp = tmp_path / f"asr/asr_{config.removesuffix('.yaml')}_student_bpe30"  # ESPnet's naming
    losses = epoch_losses((exp / "train.log").read_text())
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    score = json.loads(next(exp.glob("decode_ctc_greedy_valid.*.ave/test/score.json")).read_text())
    assert score["utterances"] == 20 and 0 <= score["cer"]
