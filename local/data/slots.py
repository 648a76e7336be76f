"""Slot labels for the embedded corpus, read back from its grammar.

Every sentence comes from one template of `conf/corpus/synth.yaml`, and every word a template's
`{class}` produced is a slot value of that class (`{place}` -> slot `place`), so slot filling needs
no annotation: match the sentence against the templates and tag what each class produced.

The tagged transcript is the form S3PRL's SNIPS slot-filling task decodes to and scores
(`downstream/ctc/text.py`, `metric.py`): `B-<slot>` before a span's first word, `E-<slot>` after
its last, words between, e.g.

    please B-action open E-action the B-adj red E-adj B-noun lamp E-noun B-adv slowly E-adv
"""
from __future__ import annotations

import re


class SlotTagger:
    def __init__(self, cfg: dict):
        words = cfg["words"]
        self.patterns = []
        for template in cfg["templates"]:
            parts, classes = [], []
            for token in template.split():
                slot = re.fullmatch(r"\{(\w+)\}", token)
                if slot:
                    classes.append(slot.group(1))
                    parts.append("(" + "|".join(map(re.escape, words[slot.group(1)])) + ")")
                else:
                    classes.append(None)
                    parts.append("(" + re.escape(token) + ")")
            self.patterns.append((template, re.compile(" ".join(parts)), classes))

    def tag(self, sentence: str) -> str:
        """The tagged transcript of one sentence; a sentence no template (or more than one
        reading of the templates) produces is an error, not a guess."""
        readings = {self._tagged(m, classes) for _, pattern, classes in self.patterns
                    if (m := pattern.fullmatch(sentence))}
        if len(readings) != 1:
            why = "no template produces it" if not readings else f"templates read it {len(readings)} ways"
            raise ValueError(f"cannot tag the slots of {sentence!r}: {why}")
        return readings.pop()

    @staticmethod
    def _tagged(match: re.Match, classes: list[str | None]) -> str:
        out = []
        for word, slot in zip(match.groups(), classes):
            out += [word] if slot is None else [f"B-{slot}", word, f"E-{slot}"]
        return " ".join(out)


def slot_values(tagged: str) -> list[tuple[str, str]]:
    """(slot, value) pairs of a tagged transcript, in order."""
    return [(slot, value) for slot, value in re.findall(r"B-(\S+) (.+?) E-\1", tagged)]
