"""Slot filling on the embedded corpus: labels read back from the grammar, S3PRL's token format
and metric, SUPERB's split (unheard voices, unseen values)."""
from __future__ import annotations

import random

import pytest

from local.data import synth
from local.data.kaldi import read_dict
from local.data.slots import SlotTagger, slot_values
from local.superb import tasks
from tests.conftest import REPO

CFG = synth.load_config(REPO / "conf/corpus/synth.yaml")


def test_every_sentence_of_the_corpus_has_one_reading():
    tagger = SlotTagger(CFG)
    sentences = synth._unique_sentences(CFG, 1600, random.Random(CFG["seed"]))
    for sentence in sentences:
        tagged = tagger.tag(sentence)
        assert " ".join(w for w in tagged.split() if not w.startswith(("B-", "E-"))) == sentence
    assert len({slot for s in sentences for slot, _ in slot_values(tagger.tag(s))}) == 10
    assert tagger.tag("please open the red lamp slowly") == \
        "please B-action open E-action the B-adj red E-adj B-noun lamp E-noun B-adv slowly E-adv"


def test_untaggable_sentences_are_refused_by_name():
    with pytest.raises(ValueError, match="'the cat sang': no template produces it"):
        SlotTagger(CFG).tag("the cat sang")
    ambiguous = {**CFG, "templates": ["the {noun}", "the {place}"], "words": {"noun": ["school"], "place": ["school"]}}
    with pytest.raises(ValueError, match="read it 2 ways"):
        SlotTagger(ambiguous).tag("the school")


def test_tokens_and_text_are_s3prls():
    """Our tokens decode to the very string S3PRL's CharacterTextSlotEncoder makes of the same
    sentence in SNIPS's format, which is what its metric parses."""
    from s3prl.downstream.ctc.text import CharacterTextSlotEncoder

    tagged = "B-name anna E-name and B-name peter E-name B-verb saw E-verb the B-noun cat E-noun"
    words = ["anna", "and", "peter", "saw", "the", "cat"]
    iobs = ["name", "O", "name", "verb", "O", "noun"]
    slots = [f"{b}-{s}" for s in ("name", "verb", "noun") for b in "BE"]
    encoder = CharacterTextSlotEncoder([" ", *"abcdefghijklmnopqrstuvwxyz"], slots)
    theirs = encoder.decode(encoder.encode(f"BOS {' '.join(words)} EOS\tO {' '.join(iobs)} O"))
    ours = tasks.sf_text(tasks.tokens("sf", tagged))
    assert ours == theirs
    assert tasks.tokens("sf", tagged)[:7] == ["B-name", "a", "n", "n", "a", "E-name", "|"]


def test_slot_scores_are_superbs():
    ref = "please B-action open E-action the B-adj red E-adj B-noun lamp E-noun"
    tok = lambda s: tasks.tokens("sf", s)  # noqa: E731
    assert tasks.score_sequences("sf", [tok(ref)], [tok(ref)]) == {"sf_f1": 100.0, "sf_cer": 0.0}
    assert tasks.score_sequences("sf", [tok(ref)], [[]]) == {"sf_f1": 0.0, "sf_cer": 100.0}
    # right types, one value misspelt by one character: F1 stays, CER is 1 of 4 + 3 + 4 characters
    wrong = ref.replace("lamp", "lump")
    scores = tasks.score_sequences("sf", [tok(ref)], [tok(wrong)])
    assert scores["sf_f1"] == 100.0 and scores["sf_cer"] == pytest.approx(100 / 11)


def test_held_out_speakers_are_spread_and_never_all():
    speakers = [f"spk{i:02d}" for i in range(1, 17)]
    assert tasks.held_out_speakers(speakers, 0.375) == {"spk02", "spk05", "spk07", "spk10", "spk13", "spk15"}
    assert len(tasks.held_out_speakers(speakers[:2], 0.9)) == 1


def test_sf_split_on_the_corpus(tiny_corpus):
    data = tiny_corpus / "data"
    task = {"labels": "text.sf", "test_speaker_share": 0.5, "held_out_values": ["anna", "red"]}
    split = tasks.select("sf", task, data)
    spk = {s: read_dict(data / s / "utt2spk") for s in ("train", "test")}
    train_speakers = {spk["train"][u] for u in split.train}
    test_speakers = {spk["test"][u] for u in split.test}
    assert train_speakers and test_speakers and not train_speakers & test_speakers
    assert not any(v in ("anna", "red") for t in split.train.values() for _, v in slot_values(t))
    assert all(u.split("-")[1].startswith("s") for u in [*split.train, *split.test])  # sentences only
    # a head that learned nothing: no slots found
    assert tasks.chance("sf", split) == {"sf_f1": 0.0, "sf_cer": 100.0}
