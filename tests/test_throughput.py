"""local/distill/throughput.py: audio-hours per hour per depth from fairseq's own progress lines."""
from __future__ import annotations

import pytest

from local.distill import throughput
from local.distill.report import parse_log
from tests.conftest import REPO

H100_RUN = REPO / "results/gpu/h100_paper_from_cache_eager.log"  # paper from a teacher cache, 96 updates


def test_rates_per_depth_from_a_real_run():
    rates = throughput.per_depth(H100_RUN)
    assert list(rates) == [3, 6, 9, 12]
    # depth 12's lines: updates 76 (its first), 80, 84, 88 (epoch 8's first), 92, 96 -> 80, 84, 92, 96 kept
    lines = [line for line in parse_log("eager", H100_RUN).train if line["depth"] == 12]
    kept = sorted(line["wps"] / 50 for line in lines if line["num_updates"] in (80, 84, 92, 96))
    assert rates[12] == pytest.approx((kept[1] + kept[2]) / 2)
    assert rates[3] > rates[12]  # a shallower student is faster
    assert 1.0 < throughput.eql_speedup(rates) < 1.6  # below the encoder-only ideal of 12 / 7.5
    assert "| run | audio-h per h at depth 3 |" in throughput.table({"eager": rates})


def test_a_log_too_short_to_measure_is_refused(tmp_path):
    log = tmp_path / "short.log"
    log.write_text("\n".join(line for line in H100_RUN.read_text().splitlines() if "num_updates=4," in line) + "\n")
    with pytest.raises(ValueError, match="log more often"):
        throughput.per_depth(log)
