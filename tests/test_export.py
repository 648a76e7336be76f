"""Exports load where users work (fairseq without the plugin, torchaudio, transformers, S3PRL,
ESPnet's two routes), with torch's default safe unpickler, and give the student's hidden states,
layer by layer."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from fairseq import checkpoint_utils
from fairseq.data import Dictionary

from fairseq_plugin.checkpoints import CheckpointError, load_speech_model
from fairseq_plugin.export import export, layers_for_depth, load_student

TOL = dict(rtol=1e-4, atol=1e-4)  # same fp32 operations; only kernel choices may differ


@pytest.fixture(scope="module")
def exported(tiny_student, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    export(tiny_student, out, ["fairseq", "s3prl", "hf"])
    student = load_student(tiny_student)
    torch.manual_seed(0)
    wav = torch.randn(2, 20000) * 0.1
    with torch.no_grad():
        layers = student(wav)["layers"]
    return out, wav, layers


# A fresh interpreter with no environment at all (no path.sh, no plugin on the path, another cwd):
# what a user of plain fairseq, ESPnet, S3PRL or transformers has. Every file loads with torch's
# default (weights_only=True) unpickler; each library's own loader gives the student's layers.
FRESH_PROCESS = """
import sys, torch
out, wav_file, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for name in ("hubert.pt", "s3prl.pt"):
    torch.load(f"{out}/{name}", weights_only=True)
wav = torch.load(wav_file)
lens = torch.tensor([wav.shape[1]] * wav.shape[0])
found = {}
with torch.no_grad():
    from fairseq import checkpoint_utils
    (m,), cfg, _ = checkpoint_utils.load_model_ensemble_and_task([f"{out}/hubert.pt"])
    assert cfg.model._name == "hubert" and cfg.task._name == "hubert_pretraining"
    found["fairseq"] = [m.eval().extract_features(wav, padding_mask=None, mask=False, output_layer=l)[0]
                        for l in range(1, n + 1)]
    from espnet2.asr.encoder.hubert_encoder import FairseqHubertEncoder
    enc = FairseqHubertEncoder(input_size=1, hubert_url=f"{out}/hubert.pt", hubert_dir_path=out,
                               output_size=found["fairseq"][-1].shape[-1], normalize_before=False).eval()
    found["espnet_encoder_hubert"] = [enc(wav, lens)[0]]
    from espnet2.asr.frontend.s3prl import S3prlFrontend
    front = S3prlFrontend(frontend_conf={"upstream": "hubert_local", "path_or_url": f"{out}/s3prl.pt"}, layer=n).eval()
    found["espnet_frontend_s3prl"] = [front(wav, lens)[0]]
    from s3prl.nn import S3PRLUpstream
    found["s3prl"] = S3PRLUpstream("hubert_local", path_or_url=f"{out}/s3prl.pt").eval()(wav, lens)[0][1:]
    from transformers import HubertModel
    hf = HubertModel.from_pretrained(f"{out}/hf", local_files_only=True).eval()
    found["transformers"] = list(hf(wav, output_hidden_states=True).hidden_states[1:])
assert "fairseq_plugin" not in sys.modules
torch.save(found, "found.pt")
"""


def test_every_export_loads_in_a_fresh_process(exported, tmp_path):
    out, wav, layers = exported
    torch.save(wav, tmp_path / "wav.pt")
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(out), str(tmp_path / "wav.pt"), str(len(layers))],
                          env={"PATH": "", "HF_HUB_OFFLINE": "1"}, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = torch.load(tmp_path / "found.pt")
    assert len(found["fairseq"]) == len(found["s3prl"]) == len(found["transformers"]) == len(layers) == 6
    for route, outputs in found.items():
        for a, b in zip(reversed(layers), reversed(outputs)):
            # S3PRL pads the waveform and so yields one more frame; the shared frames must match.
            torch.testing.assert_close(b[:, : a.shape[1]], a, **TOL, msg=lambda m: f"{route}: {m}")


def test_exports_pickle_no_objects(exported):
    out, _, _ = exported
    for name in ("hubert.pt", "s3prl.pt"):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(out / name) == []
    assert (out / "dict.km.txt").read_text() == "0 1\n"


def test_torchaudio_import_fairseq_model(exported):
    from torchaudio.models.wav2vec2.utils import import_fairseq_model

    out, wav, layers = exported
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(out / "hubert.pt")])
    model = import_fairseq_model(models[0]).eval()
    with torch.no_grad():
        feats, _ = model.extract_features(wav)
    for a, b in zip(layers, feats, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_export_refuses_what_is_not_a_student(tiny_teacher, tmp_path):
    with pytest.raises(CheckpointError, match="a 'hubert' checkpoint, not a distilled student"):
        export(tiny_teacher, tmp_path, ["fairseq"], random_init=True)
    torch.save({"cfg": {"model": {"_name": "transformer_lm"}, "task": {"_name": "language_modeling"}}, "model": {}},
               tmp_path / "lm.pt")
    with pytest.raises(CheckpointError, match="a 'transformer_lm' checkpoint, not a distilled student"):
        export(tmp_path / "lm.pt", tmp_path / "out", ["fairseq"])


def test_teacher_and_random_init_exports(tiny_teacher, tiny_student, tmp_path):
    export(tiny_teacher, tmp_path / "teacher", ["fairseq", "s3prl"])
    # rewritten, not copied: the same model, with no pickled object and the dictionary as text
    source, _, task = load_speech_model(tiny_teacher)
    (teacher,), _, _ = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "teacher/hubert.pt")])
    for (name, a), b in zip(source.state_dict().items(), teacher.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "teacher/hubert.pt") == []
    assert Dictionary.load(str(tmp_path / "teacher/dict.km.txt")).symbols == task.dictionaries[0].symbols
    export(tiny_student, tmp_path / "random", ["fairseq"], random_init=True)
    trained = load_student(tiny_student)
    (random,), cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "random/hubert.pt")])
    assert len(random.encoder.layers) == len(trained.encoder.layers)
    assert not torch.equal(random.encoder.layers[0].fc1.weight, trained.encoder.layers[0].fc1.weight)


def test_depths_keep_layers_spread_evenly_and_the_last():
    assert layers_for_depth(12, 6) == [2, 4, 6, 8, 10, 12]
    assert layers_for_depth(12, 3) == [4, 8, 12]
    assert layers_for_depth(12, 9) == [1, 3, 4, 5, 7, 8, 9, 11, 12]
    assert layers_for_depth(12, 12) == list(range(1, 13))
    with pytest.raises(ValueError, match="--depth 13: the model has 12 layers"):
        layers_for_depth(12, 13)


def test_export_at_a_chosen_depth_loads_as_a_shallower_hubert(exported, tiny_student, tmp_path):
    from s3prl.nn import S3PRLUpstream
    from transformers import HubertModel as HfHubert

    _, wav, layers = exported
    student = load_student(tiny_student)
    # a prefix of the layers gives the full model's first outputs, unchanged
    export(tiny_student, tmp_path / "prefix", ["fairseq"], layers=[1, 2])
    (prefix,), _, _ = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "prefix/hubert.pt")])
    with torch.no_grad():
        for k in (1, 2):
            got = prefix.eval().extract_features(wav, padding_mask=None, mask=False, output_layer=k)[0]
            torch.testing.assert_close(got, layers[k - 1], **TOL)
    # any increasing set: those layers' weights, in order, in every format
    export(tiny_student, tmp_path / "picked", ["fairseq", "s3prl", "hf"], layers=[2, 4, 6])
    (picked,), cfg, _ = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "picked/hubert.pt")])
    assert cfg.model.encoder_layers == len(picked.encoder.layers) == 3
    for new, old in zip(picked.encoder.layers, (2, 4, 6)):
        assert torch.equal(new.fc1.weight, student.encoder.layers[old - 1].fc1.weight)
    lens = torch.tensor([wav.shape[1]] * wav.shape[0])
    with torch.no_grad():
        last = picked.eval().extract_features(wav, padding_mask=None, mask=False, output_layer=3)[0]
        s3prl_layers = S3PRLUpstream("hubert_local", path_or_url=str(tmp_path / "picked/s3prl.pt")).eval()(wav, lens)[0]
        hf = HfHubert.from_pretrained(tmp_path / "picked/hf", local_files_only=True).eval()
        hf_last = hf(wav).last_hidden_state
    assert len(s3prl_layers) == 4 and hf.config.num_hidden_layers == 3
    torch.testing.assert_close(s3prl_layers[-1][:, : last.shape[1]], last, **TOL)
    torch.testing.assert_close(hf_last, last, **TOL)


def test_export_refuses_layers_the_model_does_not_have(tiny_student, tmp_path):
    with pytest.raises(ValueError, match=r"--layers 0,7: .*student.pt has 6 layers; give increasing, distinct layers in 1..6"):
        export(tiny_student, tmp_path / "out", ["fairseq"], layers=[0, 7])
    with pytest.raises(ValueError, match="--layers 4,2"):
        export(tiny_student, tmp_path / "out", ["fairseq"], layers=[4, 2])
    assert not (tmp_path / "out").exists()  # nothing half-written
    proc = subprocess.run([sys.executable, "-m", "fairseq_plugin.export", str(tiny_student), str(tmp_path / "out"),
                           "--depth", "9"], capture_output=True, text=True)
    assert proc.returncode == 1 and "error: --depth 9: the model has 6 layers; choose 1..6" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "fairseq_plugin.export", str(tiny_student), str(tmp_path / "out"),
                           "--depth", "3", "--formats", "fairseq"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (model,), _, _ = checkpoint_utils.load_model_ensemble_and_task([str(tmp_path / "out/hubert.pt")])
    assert len(model.encoder.layers) == 3


def test_an_export_at_a_chosen_depth_loads_everywhere(exported, tiny_student, tmp_path):
    """fairseq, ESPnet's two routes, S3PRL and transformers, in a fresh process, give the layers of
    the student run with only those layers (`task.dynamic`'s dropped student)."""
    _, wav, _ = exported
    export(tiny_student, tmp_path / "cut", ["fairseq", "s3prl", "hf"], layers=[2, 4, 6])
    with torch.no_grad():
        layers = load_student(tiny_student)(wav, layers=[1, 3, 5])["layers"]
    torch.save(wav, tmp_path / "wav.pt")
    proc = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "cut"), str(tmp_path / "wav.pt"), "3"],
                          env={"PATH": "", "HF_HUB_OFFLINE": "1"}, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = torch.load(tmp_path / "found.pt")
    assert len(found["fairseq"]) == len(found["s3prl"]) == len(found["transformers"]) == 3
    for route, outputs in found.items():
        for a, b in zip(reversed(layers), reversed(outputs)):
            torch.testing.assert_close(b[:, : a.shape[1]], a, **TOL, msg=lambda m: f"{route}: {m}")
