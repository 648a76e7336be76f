# Where the corpora are, as ESPnet recipes keep them (egs2/*/db.sh): one variable per corpus, an
# absolute path or empty. run.sh's stage 5 on real data (SUPERB through S3PRL's run_downstream.py,
# local/superb/s3prl_runner.py) reads the ones its --superb-tasks need and stops, naming the
# variable, when one is empty or missing. Shell syntax: sourced by bash.

# PR and ASR: LibriSpeech in its own layout (train-clean-100, dev-clean, test-clean, each
# <speaker>/<chapter>/*.flac + *.trans.txt). Empty: run.sh's --librispeech-root.
LIBRISPEECH=
# SF: the Audio SNIPS corpus after S3PRL's preprocessing (s3prl/preprocess/snips_preprocess.py):
# train/ valid/ test/ and slots.txt.
SNIPS=
# SID: VoxCeleb1 (wav/<speaker>/<video>/*.wav); S3PRL's split file comes from the checkout.
VOXCELEB1=
# KS: Speech Commands v0.01, its training archive (speech_commands_v0.01) unpacked here ...
SPEECHCOMMANDS=
# ... and its test archive (speech_commands_test_set_v0.01) here.
SPEECHCOMMANDS_TEST=
