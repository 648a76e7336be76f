"""Mini-SUPERB: frozen upstream through S3PRL, weighted layer sum, light heads, four tasks."""
from __future__ import annotations

import csv
import json

import yaml

from fairseq_plugin.export import export
from local.superb import run as superb
from tests.conftest import REPO


def test_mini_superb_end_to_end(tiny_corpus, tiny_student, tmp_path):
    export(tiny_student, tmp_path / "export", ["fairseq", "s3prl"])
    export(tiny_student, tmp_path / "random_init", ["fairseq", "s3prl"], random_init=True)
    cfg = yaml.safe_load((REPO / "conf/superb/mini.yaml").read_text())
    for task in cfg["tasks"].values():
        task["steps"] = 60
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(cfg))
    superb.main(["--config", str(tmp_path / "mini.yaml"), "--datadir", str(tiny_corpus / "data"),
                 "--out", str(tmp_path / "superb"), "--upstream", f"student={tmp_path / 'export/s3prl.pt'}",
                 "--upstream", f"random_init={tmp_path / 'random_init/s3prl.pt'}", "--nj", "2"])
    result = json.loads((tmp_path / "superb/student/scores.json").read_text())
    scores, weights = result["scores"], result["layer_weights"]
    assert set(scores) == {"pr", "asr", "asr_cer", "ks", "sid"}
    assert scores["sid"] > 25.0  # 4 speakers: above chance
    for w in weights.values():
        assert len(w) == 7 and abs(sum(w) - 1) < 1e-5  # CNN output + 6 layers, softmax weights
    rows = list(csv.reader((tmp_path / "superb/results.csv").open()))
    assert rows[0] == ["upstream", "pr", "asr", "asr_cer", "ks", "sid"]
    assert [r[0] for r in rows[1:]] == ["student", "random_init"]
    assert (tmp_path / "superb/layer_weights.png").stat().st_size > 0
    # a rerun reuses the stored scores
    mtime = (tmp_path / "superb/student/scores.json").stat().st_mtime_ns
    superb.main(["--config", str(tmp_path / "mini.yaml"), "--datadir", str(tiny_corpus / "data"),
                 "--out", str(tmp_path / "superb"), "--upstream", f"student={tmp_path / 'export/s3prl.pt'}"])
    assert (tmp_path / "superb/student/scores.json").stat().st_mtime_ns == mtime
