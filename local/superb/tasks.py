"""The mini-SUPERB tasks on the embedded corpus: what each trains and tests on, its tokens, its scores.

    pr   phones (`text.phn`), CTC                      PER
    asr  characters (`text`), CTC                      WER, CER
    sf   characters + slot tags (`text.sf`), CTC       slot-type F1, slot-value CER (S3PRL's metric.py)
    ks   isolated keywords (`utt2keyword`)             accuracy
    sid  speakers (`utt2spk`)                          accuracy

Slot filling is split as SUPERB's SNIPS split is: its test speakers are voices the SF head never
hears in training, and training leaves out every sentence holding one of the held-out slot values.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from local.data.kaldi import read_dict
from local.data.slots import slot_values
from local.superb.downstream import error_rate

_TAG = re.compile(r"[BE]-\S+")


@dataclass
class Split:
    train: dict[str, str]  # utt -> label
    test: dict[str, str]


def held_out_speakers(speakers: list[str], share: float) -> set[str]:
    """`share` of the speakers, evenly spaced through the sorted list (so not one accent or voice)."""
    speakers = sorted(speakers)
    k = min(len(speakers) - 1, max(1, round(share * len(speakers))))
    return {speakers[int((i + 0.5) * len(speakers) / k)] for i in range(k)}


def select(task_name: str, task: dict, data: Path) -> Split:
    labels = {s: read_dict(data / s / task["labels"]) for s in ("train", "test")}
    if task_name != "sf":
        return Split(labels["train"], labels["test"])
    spk = {s: read_dict(data / s / "utt2spk") for s in ("train", "test")}
    unheard = held_out_speakers(list(set(spk["train"].values())), task["test_speaker_share"])
    unseen = set(task["held_out_values"])
    train = {u: t for u, t in labels["train"].items()
             if spk["train"][u] not in unheard and not unseen & {v for _, v in slot_values(t)}}
    test = {u: t for u, t in labels["test"].items() if spk["test"][u] in unheard}
    if not train or not test:
        raise ValueError(f"{data}: slot filling has {len(train)} training and {len(test)} test sentences "
                         "after holding out speakers and values; lower test_speaker_share or held_out_values")
    return Split(train, test)


def tokens(task_name: str, text: str) -> list[str]:
    if task_name == "pr":
        return text.split()
    if task_name == "asr":
        return list(text.replace(" ", "|"))
    # sf, as S3PRL's CharacterTextSlotEncoder: a tag is one token, words are characters, and a
    # space follows each word (after its closing tag), except the last.
    items, out = text.split(), []
    for item, following in zip(items, items[1:] + [None]):
        out += [item] if _TAG.fullmatch(item) else list(item)
        if following is not None and not item.startswith("B-") and not following.startswith("E-"):
            out.append("|")
    return out


def sf_text(toks: list[str]) -> str:
    """Tokens back to text, as S3PRL's CharacterTextSlotEncoder decodes them for its metric."""
    return "".join(t + " " if t.startswith("B-") else " " + t if t.startswith("E-") else " " if t == "|" else t
                   for t in toks)


def score_sequences(task_name: str, refs: list[list[str]], hyps: list[list[str]]) -> dict[str, float]:
    if task_name == "pr":
        return {"pr": error_rate(refs, hyps)}
    if task_name == "asr":
        words = lambda chars: "".join(chars).replace("|", " ").split()  # noqa: E731
        chars = lambda toks: [c for c in toks if c != "|"]  # noqa: E731
        return {"asr": error_rate([words(r) for r in refs], [words(h) for h in hyps]),
                "asr_cer": error_rate([chars(r) for r in refs], [chars(h) for h in hyps])}
    from s3prl.downstream.ctc.metric import slot_type_f1, slot_value_cer  # SUPERB's own SF scoring

    ref_text, hyp_text = [sf_text(r) for r in refs], [sf_text(h) for h in hyps]
    return {"sf_f1": 100.0 * slot_type_f1(hyp_text, ref_text), "sf_cer": 100.0 * slot_value_cer(hyp_text, ref_text)}


def accuracy(refs: list[str], hyps: list[str]) -> float:
    return 100.0 * sum(r == h for r, h in zip(refs, hyps)) / len(refs)


def chance(task_name: str, split: Split) -> dict[str, float]:
    """What a head that learned nothing scores: no output (CTC) or the most frequent training class."""
    refs = [split.test[u] for u in sorted(split.test)]
    if task_name in ("ks", "sid"):
        train = list(split.train.values())
        return {task_name: accuracy(refs, [max(set(train), key=train.count)] * len(refs))}
    return score_sequences(task_name, [tokens(task_name, r) for r in refs], [[] for _ in refs])
