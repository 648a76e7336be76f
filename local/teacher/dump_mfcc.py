"""fairseq's `examples/hubert/simple_kmeans/dump_mfcc_feature.py`, reading audio with soundfile.

fairseq's reader goes through `torchaudio.sox_effects`, which torchaudio 2.9 removed; the
features (Kaldi MFCC + deltas + delta-deltas, 39 dims at 100 frames/s) and the output format
(`<split>_<rank>_<nshard>.{npy,len}`) are fairseq's own, so learn_kmeans.py and
dump_km_label.py read them unchanged.

    python -m local.teacher.dump_mfcc TSV_DIR SPLIT NSHARD RANK FEAT_DIR
"""
from __future__ import annotations

import argparse
import os
import sys

import fairseq

sys.path.insert(0, os.path.join(os.path.dirname(fairseq.__file__), "examples/hubert/simple_kmeans"))
import dump_mfcc_feature  # noqa: E402  (fairseq's script; imports its siblings by bare name)
from feature_utils import dump_feature, get_path_iterator  # noqa: E402

from local.data.audio import read_audio  # noqa: E402


class SoundfileMfccReader(dump_mfcc_feature.MfccFeatureReader):
    def read_audio(self, path, ref_len=None):
        wav = read_audio(path, self.sample_rate)
        if ref_len is not None and abs(ref_len - len(wav)) > 160:
            raise ValueError(f"{path}: manifest says {ref_len} samples, file has {len(wav)}")
        return wav


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tsv_dir")
    parser.add_argument("split")
    parser.add_argument("nshard", type=int)
    parser.add_argument("rank", type=int)
    parser.add_argument("feat_dir")
    parser.add_argument("--sample_rate", type=int, default=16000)
    args = parser.parse_args(argv)
    generator, num = get_path_iterator(f"{args.tsv_dir}/{args.split}.tsv", args.nshard, args.rank)
    dump_feature(SoundfileMfccReader(args.sample_rate), generator, num, args.split, args.nshard, args.rank, args.feat_dir)


if __name__ == "__main__":
    main()
