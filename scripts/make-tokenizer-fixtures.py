#!/usr/bin/env python3
"""Writes the fixtures that prove our tokenizers and chat templates equal Hugging Face's.

Run with the reference environment (transformers, tokenizers, jinja2, gguf):

    /work/refenv/bin/python scripts/make-tokenizer-fixtures.py

It needs `models/SmolLM2-135M-Instruct.Q4_1.gguf` (scripts/fetch-models.sh) and the IFEval data in
`../shared/data/ifeval/`. It writes:

* tests/fixtures/smollm2_tokenizer.json -- the SmolLM2 GGUF's tokenizer as Hugging Face runs it: ids and
  decodes of a hand-written corpus, and (count, sha256) of the ids of every IFEval prompt and GPT-4
  response.
* tests/fixtures/bpe_families.json -- for the `qwen2` and `llama-bpe` GGUF pre-tokenizers, which have no
  real model on this machine: a small byte-level BPE trained here through each family's real
  tokenizer.json pipeline, in GGUF's terms (tokens, token types, merges), with the ids, pre-tokenizer
  splits and decodes that pipeline gives.
* tests/fixtures/chat_templates/{smollm2,qwen2,llama3}.jinja and expected.json -- the templates and what
  transformers' `apply_chat_template` renders for a set of conversations.

Why the SmolLM2 reference is not simply transformers' GGUF loader: SmolLM2's own tokenizer.json
(HuggingFaceTB/SmolLM2-135M) pre-tokenizes with Sequence[Digits(individual_digits), ByteLevel(regex)],
and llama.cpp's `smollm` pre-tokenizer splits `\\p{N}` first for the same reason; transformers' GGUF
loader leaves the Digits step out (ByteLevel only). We take the vocabulary, merges and special tokens
from transformers' GGUF loader and put the model's real pre-tokenizer back; the entries where the two
differ are listed in the fixture under `transformers_gguf_loader_differs`.
"""

import hashlib
import json
import sys
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import AutoTokenizer, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
GGUF = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
IFEVAL = ROOT.parent / "shared" / "data" / "ifeval"
FIXTURES = ROOT / "tests" / "fixtures"

# The split regexes of the real tokenizer.json files (Meta-Llama-3 and Qwen2).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CORPUS = [
    "",
    "Hello world",
    "Hello, World!",
    " leading space",
    "  two leading spaces",
    "trailing space ",
    "trailing spaces   ",
    "multiple   internal    spaces",
    # digits and numbers
    "12345",
    "3.14159",
    "1,000,000 and 1.000.000",
    "a1b2c3",
    "x  1",
    " 42",
    "007 and 0x1F",
    "The year 2024 had 366 days; 9999999999999999999 is big.",
    "Phone: +1 (555) 123-4567",
    "٣ Arabic-Indic and ² superscript and ½ fraction",
    # unicode
    "Café naïve résumé façade Ångström",
    "e\u0301 combining acute",
    "你好，世界！这是一个测试。",
    "日本語のテキストとカタカナ",
    "한국어 텍스트입니다",
    "Россия и Україна",
    "مرحبا بالعالم",
    "हिन्दी पाठ",
    "Emoji: 😀👍🏽🇺🇸 and ❤️",
    "family 👨‍👩‍👧 zwj",
    "non\u00a0breaking\u00a0space and zero\u200bwidth",
    "Hello 世界 123 ❤",
    # whitespace
    "a\n\nb",
    "\n\n\n",
    "tabs\tand\ttabs",
    "\t\tindented",
    "line\r\nwindows\r\n",
    "   \n  \n",
    "ends with newline\n",
    " \t \n x",
    "a \nb",
    "word\n    indented line\n\tand a tab",
    # code
    "def foo(x):\n    return x ** 2  # square\n",
    "fn main() {\n    println!(\"{}\", 1 + 2);\n}",
    '{"key": [1, 2.5, null], "nested": {"a": "b"}}',
    "<div class=\"x\">&amp; &lt;tag&gt;</div>",
    "for i in range(10):\n\tif i % 2 == 0:\n\t\tprint(i)",
    "regex: [^\\s\\p{L}]+ and $HOME/path/to/file.txt",
    "x+=1;y-=2;z*=3;w/=4",
    # special tokens inside text
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|im_end|>more text",
    "<|im_start|><|im_start|>",
    "< |im_start| > is not special",
    "<|im_star partial",
    "<|IM_START|> wrong case",
    "<repo_name>autoif<file_sep>src/lib.rs",
    # contractions
    "I'm sure they'll say it's fine, don't you think? We've seen it. He'd've gone.",
    "IT'S LOUD, DON'T SHOUT",
    "'s 't 're 've 'm 'll 'd",
    "rock 'n' roll",
    # punctuation runs
    "Punctuation!!! ??? ... --- (parens)",
    "$$$ %%% ^^^ &&& *** ___",
    "@user #hashtag https://example.com/a?b=c&d=e",
    # bytes the SmolLM2 vocabulary has no token for (0x04, 0x06, 0x13...)
    "control\x04char and \x06 and \x13",
    "nul\x00 and del\x7f",
    # Llama 3's ignore_merges: a whole pre-token in the vocabulary is one token (see FAMILY_SPECIALS)
    "an unreachableword here",
    # long mixed text
    "The quick brown fox jumps over the lazy dog. "
    "In 1969, Apollo 11 landed on the Moon; 20 July at 20:17 UTC. "
    "Prices rose 3.5% (from $1,234.56 to $1,277.77).\n\n"
    "Résumé: naïve café — “quoted” ‘text’ … and so on.",
]


def ids_digest(ids):
    return {"n": len(ids), "sha256": hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()}


def ifeval_texts():
    """Every IFEval prompt and every GPT-4 response, keyed so a mismatch names its text."""
    texts = {}
    with open(IFEVAL / "input_data.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts[f"prompt:{row['key']}"] = row["prompt"]
    with open(IFEVAL / "gpt4_responses.jsonl", encoding="utf-8") as f:
        for index, line in enumerate(f):
            texts[f"response:{index}"] = json.loads(line)["response"]
    return texts


def encode_case(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    return {
        "text": text,
        "ids": ids,
        "decoded": tokenizer.decode(ids, skip_special_tokens=False),
        "decoded_skip_special": tokenizer.decode(ids, skip_special_tokens=True),
    }


def smollm2_fixture():
    loaded = AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)
    loader_backend = loaded.backend_tokenizer
    reference = Tokenizer.from_str(loader_backend.to_str())
    reference.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    cases = [encode_case(reference, text) for text in CORPUS]
    bulk = {key: ids_digest(reference.encode(text, add_special_tokens=False).ids) for key, text in ifeval_texts().items()}

    differs = [
        text
        for text in CORPUS + list(ifeval_texts().values())
        if loader_backend.encode(text, add_special_tokens=False).ids
        != reference.encode(text, add_special_tokens=False).ids
    ]
    print(f"smollm2: transformers' GGUF loader (no Digits step) differs on {len(differs)} texts", file=sys.stderr)
    return {
        "gguf": GGUF.name,
        "reference": "transformers GGUF loader's vocabulary, merges and special tokens with SmolLM2's "
        "tokenizer.json pre-tokenizer Sequence[Digits(individual_digits=true), ByteLevel]",
        "bos_token": loaded.bos_token,
        "eos_token": loaded.eos_token,
        "add_bos_token": bool(getattr(loaded, "add_bos_token", False)),
        "vocab_size": reference.get_vocab_size(with_added_tokens=True),
        "special_tokens": {t.content: i for i, t in reference.get_added_tokens_decoder().items() if t.special},
        "transformers_gguf_loader_differs": differs[:20],
        "transformers_gguf_loader_differs_count": len(differs),
        "cases": cases,
        "ifeval": bulk,
    }


def family_pipeline(family, vocab=None, merges=None):
    """A tokenizer laid out as the family's real tokenizer.json: Qwen2 (NFC, Split, ByteLevel) or
    Meta-Llama-3 (Split, ByteLevel, BPE with ignore_merges)."""
    model = BPE(vocab=vocab, merges=merges, ignore_merges=family == "llama-bpe") if vocab else BPE(
        ignore_merges=family == "llama-bpe"
    )
    tokenizer = Tokenizer(model)
    split = QWEN2_SPLIT if family == "qwen2" else LLAMA3_SPLIT
    if family == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=family != "qwen2", use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


# `whole_words` are vocabulary entries no merge builds: only Llama 3's ignore_merges reaches them.
FAMILY_SPECIALS = {
    "qwen2": {"control": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "user_defined": ["<tool_call>"],
              "whole_words": [], "bos": None, "eos": "<|im_end|>", "add_bos": False},
    "llama-bpe": {"control": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                              "<|end_header_id|>", "<|eot_id|>"], "user_defined": [],
                  "whole_words": ["\u0120unreachableword"],
                  "bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "add_bos": True},
}


def family_fixture(family, training_texts, bulk_texts):
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    trained = family_pipeline(family)
    trained.train_from_iterator(training_texts, trainer=trainer)
    model = json.loads(trained.to_str())["model"]
    by_id = sorted(model["vocab"].items(), key=lambda item: item[1])
    tokens = [token for token, _ in by_id]
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    specials = FAMILY_SPECIALS[family]
    tokens += specials["whole_words"]
    token_types = [1] * len(tokens)
    for token in specials["control"]:
        tokens.append(token)
        token_types.append(3)
    for token in specials["user_defined"]:
        tokens.append(token)
        token_types.append(4)

    vocab = {token: index for index, token in enumerate(tokens)}
    reference = family_pipeline(family, vocab, [tuple(m.split(" ")) for m in merges])
    reference.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials["control"]])
    reference.add_tokens([AddedToken(t, normalized=False, special=False) for t in specials["user_defined"]])
    cases = []
    for text in CORPUS:
        case = encode_case(reference, text)
        case["splits"] = [piece for piece, _ in reference.pre_tokenizer.pre_tokenize_str(text)]
        cases.append(case)
    return {
        "pre": family,
        "tokens": tokens,
        "token_types": token_types,
        "merges": merges,
        "bos_token": specials["bos"],
        "eos_token": specials["eos"],
        "add_bos_token": specials["add_bos"],
        "cases": cases,
        "ifeval": {key: ids_digest(reference.encode(text, add_special_tokens=False).ids) for key, text in bulk_texts.items()},
    }


def bpe_families_fixture():
    texts = ifeval_texts()
    responses = [text for key, text in texts.items() if key.startswith("response:")]
    prompts = {key: text for key, text in texts.items() if key.startswith("prompt:")}
    return {family: family_fixture(family, responses, prompts) for family in ("qwen2", "llama-bpe")}


QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
# Python-isms real templates use: string methods (pycompat), tojson with options, dict literals,
# namespace, loop controls, slicing, `is defined`, and the whitespace control that trim_blocks and
# lstrip_blocks change.
PYTHONIC_TEMPLATE = """{%- set ns = namespace(count=0) %}
{%- for message in messages %}
    {%- if message.role == 'system' %}{% continue %}{% endif %}
    {%- set ns.count = ns.count + 1 %}
  [{{ ns.count }}] {{ message.role.upper() }}: {{ message['content'].strip() }}
    {%- if message.content.startswith('Hi') %} (greeting){% endif %}
    {%- if message.tool_calls is defined %} tool_calls!{% endif %}

{% endfor %}
    {% if messages[0].role == 'system' %}
system words: {{ messages[0].content.split() | length }}
    {% endif %}
json: {{ messages[-1] | tojson }}
json indent: {{ {'n': messages | length, 'roles': messages | map(attribute='role') | list, 'f': 0.5, 'big': 1e20, 'small': 0.0001, 'x': none, 'ok': true} | tojson(indent=2) }}
sorted: {{ {'b': 1, 'a': [], 'c': {}} | tojson(sort_keys=true) }}
last two: {% for m in messages[-2:] %}{{ m.role }}{% if not loop.last %}, {% endif %}{% endfor %}

{%- if add_generation_prompt %}
<generate>
{%- endif %}
"""
RAISING_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] not in ['user', 'assistant', 'system'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}{% endif %}"
    "{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
)

CONVERSATIONS = {
    "user": [{"role": "user", "content": "Hello!"}],
    "system_user": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Hi, how are you?"},
    ],
    "multi_turn": [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3 * 3?"},
    ],
    "system_multi_turn_assistant_last": [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "Count to three."},
        {"role": "assistant", "content": "Un, deux, trois."},
    ],
    "padded_content": [
        {"role": "system", "content": "\n  Be brief.  \n"},
        {"role": "user", "content": "   spaces around   \n\n"},
    ],
    "unicode_and_markup": [
        {"role": "user", "content": "Use <|im_end|> literally? 你好 😀 \"quotes\" & {{ not a tag }} {% raw %}"},
        {"role": "assistant", "content": "Line one\nLine two\n\ttabbed"},
    ],
    "empty_content": [{"role": "user", "content": ""}],
}


def render(source, messages, add_generation_prompt, bos_token, eos_token):
    # A real tokenizer object, so this goes through `apply_chat_template` itself.
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(BPE()), bos_token=bos_token, eos_token=eos_token)
    return tokenizer.apply_chat_template(
        messages, chat_template=source, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def chat_template_fixtures():
    loaded = AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)
    templates = {
        "smollm2": (loaded.chat_template, loaded.bos_token, loaded.eos_token),
        "qwen2": (QWEN2_TEMPLATE, None, "<|im_end|>"),
        "llama3": (LLAMA3_TEMPLATE, "<|begin_of_text|>", "<|eot_id|>"),
        "pythonic": (PYTHONIC_TEMPLATE, "<s>", "</s>"),
    }
    out_dir = FIXTURES / "chat_templates"
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = []
    for name, (source, bos, eos) in templates.items():
        (out_dir / f"{name}.jinja").write_text(source, encoding="utf-8")
        for conversation, messages in CONVERSATIONS.items():
            for generation_prompt in (False, True):
                cases.append(
                    {
                        "template": name,
                        "bos_token": bos,
                        "eos_token": eos,
                        "conversation": conversation,
                        "messages": messages,
                        "add_generation_prompt": generation_prompt,
                        "rendered": render(source, messages, generation_prompt, bos, eos),
                    }
                )
    (out_dir / "raising.jinja").write_text(RAISING_TEMPLATE, encoding="utf-8")
    bad = [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}]
    try:
        render(RAISING_TEMPLATE, bad, False, None, None)
        raise SystemExit("the raising template did not raise")
    except Exception as error:  # jinja2.TemplateError
        raised = str(error)
    good = [{"role": "user", "content": "hi"}]
    return {
        "cases": cases,
        "raising": {
            "template": "raising",
            "messages": bad,
            "error": raised,
            "ok_messages": good,
            "ok_rendered": render(RAISING_TEMPLATE, good, False, None, None),
        },
    }


def write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)", file=sys.stderr)


def main():
    if not GGUF.exists():
        raise SystemExit(f"{GGUF} is missing: run scripts/fetch-models.sh first")
    write_json(FIXTURES / "smollm2_tokenizer.json", smollm2_fixture())
    write_json(FIXTURES / "bpe_families.json", bpe_families_fixture())
    write_json(FIXTURES / "chat_templates" / "expected.json", chat_template_fixtures())


if __name__ == "__main__":
    main()
