#!/usr/bin/env python3
"""Makes the reference fixtures the decoder and engine tests compare against.

Writes, with Hugging Face transformers as the reference implementation:

  tests/fixtures/tiny-llama/      LlamaForCausalLM, random weights, GQA, Llama 3 rope scaling,
                                  untied embeddings, one model.safetensors
  tests/fixtures/tiny-qwen2/      Qwen2ForCausalLM, random weights incl. q/k/v bias, tied
                                  embeddings, sharded safetensors + model.safetensors.index.json
  tests/fixtures/*/reference.safetensors
                                  prefill / token-by-token decode / per-sequence batch logits
  tests/fixtures/smollm2_logprobs.json
                                  per-token log-probs and greedy ids of the real SmolLM2 GGUF
                                  (dequantized to f32 by transformers' GGUF loader)

Deterministic: fixed seeds and a fixed thread count, so re-running gives the same files.
Run with the reference environment, e.g.
  /work/refenv/bin/python scripts/make-model-fixtures.py
Needs: torch, transformers (5.x), tokenizers, safetensors, gguf, numpy.
"""

import argparse
import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

ROOT = Path(__file__).resolve().parent.parent

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOKENIZER_VOCAB = 320

# ChatML, the same shape as SmolLM2's template (default system message when none is given).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a tiny test model.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Small built-in corpus for the BPE: enough repeated words and code for ~60 merges.
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Answer in fewer than 20 words and do not use any commas.",
    "Write the response in all lowercase letters, then end it with a question.",
    "def evaluate(response):\n    return len(response.split()) < 20\n",
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i * i)\n",
    "Instruction: respond in JSON. Query: list three colours.",
    "Prices: 12.50, 3.75 and 100 units; total 116.25.",
    "Caf\u00e9 cr\u00e8me, na\u00efve r\u00e9sum\u00e9, \u65e5\u672c\u8a9e, emoji \U0001f600.",
    "   leading spaces\n\n\ttabs and\nnewlines   ",
    "the model writes the instruction, the function and the test cases",
    "the response follows the instruction when the function returns true",
]


def train_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 8, trainer)
    assert tok.get_vocab_size() == TOKENIZER_VOCAB, tok.get_vocab_size()
    return tok


def write_tokenizer(tok: Tokenizer, folder: Path, eos_ids) -> None:
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 256,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    gen = GenerationConfig(
        bos_token_id=special["<|im_start|>"],
        eos_token_id=eos_ids,
        pad_token_id=special["<|im_end|>"],
    )
    gen.save_pretrained(folder)


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Weights large enough that a wrong op moves logits far beyond the 1e-4 tolerance:
    std 0.2 for matrices and biases, RMSNorm weights spread around 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.copy_(torch.empty(p.shape).uniform_(0.5, 1.5, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def check_llama3_bands(config: dict) -> None:
    """Llama 3 scaling treats frequencies in three bands (kept, interpolated, divided by
    `factor`); the fixture must exercise all three or a bug in one would go unseen."""
    rs = config["rope_scaling"]
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    inv_freq = config["rope_theta"] ** (-np.arange(0, head_dim, 2) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    high = rs["original_max_position_embeddings"] / rs["high_freq_factor"]
    low = rs["original_max_position_embeddings"] / rs["low_freq_factor"]
    bands = {"kept": wavelen < high, "smoothed": (wavelen >= high) & (wavelen <= low), "scaled": wavelen > low}
    missing = [name for name, hit in bands.items() if not hit.any()]
    assert not missing, f"rope scaling bands not exercised: {missing}"


def reference_logits(model, seed: int) -> dict:
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    out = {}
    with torch.no_grad():
        ids = torch.randint(0, vocab, (20,), generator=gen)
        out["prefill.ids"] = ids
        out["prefill.logits"] = model(input_ids=ids[None]).logits[0]

        cache = DynamicCache(config=model.config)
        steps = []
        for t in range(ids.numel()):
            step = model(input_ids=ids[None, t : t + 1], cache=cache, use_cache=True)
            steps.append(step.logits[0, -1])
        out["decode.logits"] = torch.stack(steps)

        for i, length in enumerate([7, 20, 3, 12]):
            seq = torch.randint(0, vocab, (length,), generator=gen)
            out[f"batch.ids.{i}"] = seq
            out[f"batch.logits.{i}"] = model(input_ids=seq[None]).logits[0]

    gap = (out["decode.logits"] - out["prefill.logits"]).abs().max().item()
    assert gap < 1e-4, f"transformers' own prefill and cached decode disagree by {gap}"
    return {k: v.contiguous() for k, v in out.items()}


def rewrite_rope_as_v4(folder: Path) -> None:
    """transformers 5 writes `rope_parameters`; published Llama 3 checkpoints carry the 4.x
    keys `rope_theta` + `rope_scaling`. The Llama fixture uses the 4.x form (what the hub
    serves), the Qwen2 fixture keeps the 5.x form, so the loader is tested on both."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = rope
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def make_tiny(kind: str, out_root: Path, tok: Tokenizer) -> None:
    folder = out_root / f"tiny-{kind}"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    special = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    common = dict(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=special["<|im_start|>"],
        pad_token_id=special["<|im_end|>"],
    )
    if kind == "llama":
        rope_scaling = {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            # 64 (not 32) so that with head_dim 16 one frequency falls in the smoothed band.
            "original_max_position_embeddings": 64,
        }
        check_llama3_bands({**common, "rope_theta": 500000.0, "rope_scaling": rope_scaling})
        # A list, as Llama 3 instruct checkpoints have; the Qwen2 fixture has a single id.
        eos_ids = [special["<|im_end|>"], special["<|endoftext|>"]]
        config = LlamaConfig(
            **common,
            eos_token_id=eos_ids,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            rope_parameters={"rope_theta": 500000.0, **rope_scaling},
        )
        model_cls, seed = LlamaForCausalLM, 1
    else:
        eos_ids = special["<|im_end|>"]
        config = Qwen2Config(
            **common,
            eos_token_id=eos_ids,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        )
        model_cls, seed = Qwen2ForCausalLM, 2

    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32)
    randomise(model, seed)
    if kind == "llama":
        model.save_pretrained(folder)
        rewrite_rope_as_v4(folder)
    else:
        model.save_pretrained(folder, max_shard_size="200KB")
        assert (folder / "model.safetensors.index.json").exists(), "qwen2 fixture was not sharded"
    write_tokenizer(tok, folder, eos_ids)

    # The reference comes from the folder as written, so the files on disk are what is tested.
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    reloaded.eval()
    for name, p in model.state_dict().items():
        assert torch.equal(p, reloaded.state_dict()[name]), f"{name} changed on reload"
    if kind == "llama":
        check_rope_scaling_matters(reloaded, folder)
    save_file(reference_logits(reloaded, seed + 100), str(folder / "reference.safetensors"))

    hf_tok = AutoTokenizer.from_pretrained(folder)
    rendered = hf_tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n"), rendered
    assert hf_tok.encode("hello world", add_special_tokens=False) == tok.encode("hello world").ids


def check_rope_scaling_matters(model, folder: Path) -> None:
    """Without the Llama 3 scaling the same weights must give clearly different logits."""
    plain_config = LlamaConfig.from_pretrained(folder)
    plain_config.rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
    plain = LlamaForCausalLM(plain_config)
    plain.load_state_dict(model.state_dict())
    plain.eval()
    ids = torch.arange(20)[None] % model.config.vocab_size
    with torch.no_grad():
        gap = (model(input_ids=ids).logits - plain(input_ids=ids).logits).abs().max().item()
    assert gap > 1e-2, f"rope scaling changes logits by only {gap}"


LOGPROB_CASES = [
    (
        "chatml_capital",
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        "The capital of France is Paris.<|im_end|>",
    ),
    (
        "chatml_constraint",
        "<|im_start|>user\nDescribe autumn. Answer in fewer than 20 words and use no commas.<|im_end|>\n"
        "<|im_start|>assistant\n",
        "Leaves turn red and gold as cool winds carry them down to the quiet ground.<|im_end|>\n",
    ),
    ("plain_fox", "The quick brown fox", " jumps over the lazy dog."),
    ("code", "def add(a, b):\n", "    \"\"\"Return the sum.\"\"\"\n    return a + b\n\n\nprint(add(2, 40))\n"),
    (
        "unicode_digits",
        "Prices in 2024: ",
        "\u20ac12.50 for 3 caf\u00e9s \u2014 tr\u00e8s bien! \u65e5\u672c\u8a9e\u3082\u5c11\u3057\u3002 1234567890",
    ),
    ("whitespace", "Line one\n\n\n", "   indented   text\twith tabs\n  \n"),
]

# Chosen so that every greedy step wins by a clear logit margin (>= 0.8), not a near tie.
GREEDY_CASES = [
    [{"role": "user", "content": "Name three primary colours."}],
    [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Write a Python function that reverses a string."},
    ],
]


def check_gguf_unpermuted(model, gguf_path: Path) -> None:
    """llama.cpp's converter stores Q/K permuted for its rope layout; transformers' loader
    must have undone it, so re-applying the converter's permutation to the loaded HF
    weights reproduces the dequantized GGUF tensors exactly."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(gguf_path))
    tensors = {t.name: t for t in reader.tensors}
    cfg = model.config
    attn = model.model.layers[0].self_attn
    for gguf_name, hf_weight, heads in [
        ("blk.0.attn_q.weight", attn.q_proj.weight, cfg.num_attention_heads),
        ("blk.0.attn_k.weight", attn.k_proj.weight, cfg.num_key_value_heads),
    ]:
        t = tensors[gguf_name]
        stored = dequantize(t.data, t.tensor_type).reshape(hf_weight.shape)
        w = hf_weight.detach().numpy()
        permuted = w.reshape(heads, 2, w.shape[0] // heads // 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)
        assert np.array_equal(permuted, stored), f"{gguf_name}: loader did not un-permute"
        assert not np.array_equal(w, stored), f"{gguf_name}: permutation is a no-op here"


def make_smollm2(models_dir: Path, gguf_name: str, out: Path) -> None:
    gguf_path = models_dir / gguf_name
    model = AutoModelForCausalLM.from_pretrained(
        models_dir, gguf_file=gguf_name, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    tok = AutoTokenizer.from_pretrained(models_dir, gguf_file=gguf_name)
    check_gguf_unpermuted(model, gguf_path)

    logprobs = []
    with torch.no_grad():
        for name, prompt, completion in LOGPROB_CASES:
            prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            completion_ids = tok(completion, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt_ids + completion_ids])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            positions = torch.arange(len(prompt_ids) - 1, ids.shape[1] - 1)
            token_logprobs = logp[positions, torch.tensor(completion_ids)].tolist()
            logprobs.append(
                {
                    "name": name,
                    "prompt": prompt,
                    "completion": completion,
                    "prompt_ids": prompt_ids,
                    "completion_ids": completion_ids,
                    "token_logprobs": [round(x, 6) for x in token_logprobs],
                    "sum_logprob": round(sum(token_logprobs), 5),
                }
            )

        greedy = []
        for messages in GREEDY_CASES:
            prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            ids, margins = list(prompt_ids), []
            for _ in range(5):
                top2 = model(input_ids=torch.tensor([ids])).logits[0, -1].topk(2)
                margins.append(top2.values[0].item() - top2.values[1].item())
                ids.append(int(top2.indices[0]))
            generated = ids[len(prompt_ids):]
            greedy.append(
                {
                    "messages": messages,
                    "prompt": prompt,
                    "prompt_ids": prompt_ids,
                    "greedy_ids": generated,
                    "greedy_text": tok.decode(generated),
                    # Smallest top-1/top-2 logit gap over the steps: how close a tie came.
                    "min_top2_margin": round(min(margins), 4),
                }
            )

    fixture = {
        "generator": "scripts/make-model-fixtures.py",
        "model": f"models/{gguf_name}",
        "model_sha256": hashlib.sha256(gguf_path.read_bytes()).hexdigest(),
        "reference": f"transformers {transformers.__version__}, torch {torch.__version__}, "
                     "GGUF dequantized to float32, eager attention",
        "logprobs": logprobs,
        "greedy": greedy,
    }
    out.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fixtures-dir", type=Path, default=ROOT / "tests" / "fixtures")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--gguf", default="SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--skip-smollm2", action="store_true", help="only the tiny random models")
    args = parser.parse_args()

    # Same thread count every run: CPU reductions are only bit-reproducible at a fixed count.
    torch.set_num_threads(2)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    args.fixtures_dir.mkdir(parents=True, exist_ok=True)

    tok = train_tokenizer()
    for kind in ["llama", "qwen2"]:
        make_tiny(kind, args.fixtures_dir, tok)
        print(f"wrote {args.fixtures_dir / ('tiny-' + kind)}")
    if not args.skip_smollm2:
        gguf_path = args.models_dir / args.gguf
        if not gguf_path.exists():
            raise SystemExit(f"{gguf_path}: not found (run scripts/fetch-models.sh)")
        out = args.fixtures_dir / "smollm2_logprobs.json"
        make_smollm2(args.models_dir, args.gguf, out)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
