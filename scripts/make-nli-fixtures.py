#!/usr/bin/env python3
"""Makes the NLI classifier fixtures that tests/pipeline_nli.rs compares against.

Writes, with Hugging Face transformers as the reference implementation:

  tests/fixtures/nli/bert/      BertForSequenceClassification, random weights, a WordPiece
                                tokenizer over a small instruction corpus,
                                id2label ENTAILMENT/NEUTRAL/CONTRADICTION (MNLI order, upper case)
  tests/fixtures/nli/deberta/   DebertaV2ForSequenceClassification in the DeBERTa-v3 shape
                                (relative attention with log buckets, p2c|c2p, no absolute
                                positions, no token types), a Unigram tokenizer with a
                                Metaspace pre-tokenizer over the same corpus, id2label
                                contradiction/entailment/neutral
  */reference.json              for a few (premise, hypothesis) pairs of different lengths
                                (one longer than the model's 64 positions, so it is truncated):
                                the logits and labels of model.eval() on one padded batch

Deterministic: fixed seeds and one thread, so re-running gives the same files.
Run with the reference environment:
  /work/refenv/bin/python scripts/make-nli-fixtures.py
Needs: torch, transformers (5.x), tokenizers.
"""

import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    PreTrainedTokenizerFast,
)

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "nli"
MAX_POSITIONS = 64
PUNCTUATION = ".,:;?!\"'()-"

CORPUS = """
Answer in fewer than twenty words and do not use any commas.
Write the whole response in lowercase letters, with no capital letters at all.
Your answer must contain exactly three bullet points in markdown format.
Wrap your entire response in double quotation marks.
End your response with the exact phrase: is there anything else I can help with?
Include the keywords river and mountain in the response.
The response must have at least five sentences and fewer than ten paragraphs.
Respond in English only, using capital letters for every word.
Highlight at least two sections with markdown, for example a highlighted section.
Do not include the word sorry anywhere in your reply.
First repeat the request word for word without change, then give your answer.
Finish with a postscript starting with P.S. that thanks the reader.
Separate the paragraphs with the markdown divider of three asterisks.
The answer should be valid JSON and nothing else, wrapped in a code block.
Give two different responses separated by six asterisk symbols.
Use no more than one hundred words in total and keep sentences short.
Every sentence must end with an exclamation mark instead of a period.
The letter q should appear at least four times in the text.
Provide a title wrapped in double angular brackets, such as a poem title.
Mention the number of items in a numbered list of exactly seven entries.
The response is short and polite, it answers the question directly.
The reply may be long or short, and it may contain any punctuation.
Write a story about a cat who learns to swim in a cold lake.
Describe the weather in the city today using simple words.
Explain how a computer stores numbers and letters in memory.
The function checks that the response has no commas and counts the words.
The function returns true when every letter is lowercase.
The function counts bullet points that start with an asterisk.
The function checks whether the text starts and ends with a quotation mark.
It verifies that the last line equals the required closing phrase.
""".strip()

PAIRS = [
    ["Answer in fewer than twenty words.", "Answer in fewer than twenty words."],
    [
        "Write the whole response in lowercase letters.",
        "Use capital letters for every word in the response.",
    ],
    ["Do not use any commas.", "The response must contain at least five commas and a title."],
    [
        "Wrap your entire response in double quotation marks and end your response with the "
        "exact phrase: is there anything else I can help with?",
        "The function checks whether the text starts and ends with a quotation mark.",
    ],
    ["Give two responses.", "Respond in English."],
    [
        # Longer than MAX_POSITIONS tokens together: the pair is truncated longest-first.
        " ".join(CORPUS.splitlines()[:6]),
        " ".join(CORPUS.splitlines()[23:28]),
    ],
]


# Vocabularies are built here, not trained: the tokenizers trainers break ties
# differently from run to run. Words seen more than once become whole tokens; the
# rest are split into the suffixes and characters below, which exercises the models'
# subword search.
SUFFIXES = ["s", "ing", "ed", "ly", "er", "tion"]


def corpus_words(lowercase):
    text = CORPUS.lower() if lowercase else CORPUS
    words = re.findall(r"\w+|[^\w\s]", text)
    counts = Counter(words)
    frequent = sorted(w for w, n in counts.items() if n > 1)
    chars = sorted(set("".join(words)) | set(PUNCTUATION))
    return counts, frequent, chars


def bert_tokenizer():
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    _, frequent, chars = corpus_words(lowercase=True)
    pieces = special + chars + ["##" + c for c in chars] + ["##" + s for s in SUFFIXES] + frequent
    unique = list(dict.fromkeys(pieces))
    tok = Tokenizer(models.WordPiece({p: i for i, p in enumerate(unique)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = pair_template(tok)
    tok.decoder = decoders.WordPiece()
    return tok, "[PAD]"


def deberta_tokenizer():
    special = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    counts, frequent, chars = corpus_words(lowercase=False)
    total = sum(counts.values())
    vocab = [(p, 0.0) for p in special]
    vocab += [("▁" + w, math.log(counts[w] / total)) for w in frequent]
    vocab += [("▁", -8.0)] + [(s, -9.0) for s in SUFFIXES]
    vocab += [(c, -12.0) for c in chars] + [("▁" + c, -12.5) for c in chars]
    unique = {}
    for piece, score in vocab:
        unique.setdefault(piece, score)
    tok = Tokenizer(models.Unigram(list(unique.items()), unk_id=special.index("[UNK]")))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Replace("``", '"'), normalizers.Replace("''", '"'), normalizers.NFKC()]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = pair_template(tok)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return tok, "[PAD]"


def pair_template(tok):
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    return processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )


def bert_model(vocab_size, pad_id):
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=MAX_POSITIONS,
        type_vocab_size=2,
        pad_token_id=pad_id,
        initializer_range=0.2,
        id2label={0: "ENTAILMENT", 1: "NEUTRAL", 2: "CONTRADICTION"},
        label2id={"ENTAILMENT": 0, "NEUTRAL": 1, "CONTRADICTION": 2},
    )
    config.architectures = ["BertForSequenceClassification"]
    return BertForSequenceClassification(config)


def deberta_model(vocab_size, pad_id):
    config = DebertaV2Config(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_act="gelu",
        max_position_embeddings=MAX_POSITIONS,
        type_vocab_size=0,
        pad_token_id=pad_id,
        initializer_range=0.2,
        relative_attention=True,
        max_relative_positions=-1,
        position_buckets=16,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        pooler_hidden_size=32,
        pooler_dropout=0.0,
        pooler_hidden_act="gelu",
        id2label={0: "contradiction", 1: "entailment", 2: "neutral"},
        label2id={"contradiction": 0, "entailment": 1, "neutral": 2},
    )
    config.architectures = ["DebertaV2ForSequenceClassification"]
    return DebertaV2ForSequenceClassification(config)


def build(name, make_tokenizer, make_model, seed):
    out = ROOT / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    tok, pad = make_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    pad_id = tok.token_to_id(pad)

    # transformers' own tokenizer wrapper pads and truncates the batch, as a user would;
    # BERT and DeBERTa tokenizers hand the model the pair's token types too.
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_file=str(out / "tokenizer.json"),
        pad_token=pad,
        model_max_length=MAX_POSITIONS,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    premises = [p for p, _ in PAIRS]
    hypotheses = [h for _, h in PAIRS]
    batch = hf_tok(premises, hypotheses, padding=True, truncation=True, return_tensors="pt")
    lengths = batch["attention_mask"].sum(1).tolist()
    assert batch["token_type_ids"].max() == 1, "the pairs' second segments have type 1"
    assert max(lengths) == MAX_POSITIONS, "the long pair must be truncated"

    # Random weights: take the first seed whose predictions include contradiction and
    # another label, and where no pair sits on a near tie (labels are compared exactly).
    while True:
        torch.manual_seed(seed)
        model = make_model(tok.get_vocab_size(), pad_id)
        model.eval()
        with torch.no_grad():
            logits = model(**batch).logits
        labels = [model.config.id2label[int(i)] for i in logits.argmax(-1)]
        top2 = logits.topk(2, dim=-1).values
        margin = (top2[:, 0] - top2[:, 1]).min()
        varied = len(set(labels)) > 1 and any(l.lower() == "contradiction" for l in labels)
        if varied and margin > 1e-2:
            break
        seed += 1
    model.save_pretrained(out)
    reference = {
        "seed": seed,
        "pairs": PAIRS,
        "token_counts": lengths,
        "logits": logits.tolist(),
        "labels": labels,
    }
    (out / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"{name}: {size} bytes, tokens {lengths}, labels {labels}")


def main():
    torch.set_num_threads(1)
    build("bert", bert_tokenizer, bert_model, seed=6)
    build("deberta", deberta_tokenizer, deberta_model, seed=7)


if __name__ == "__main__":
    main()
