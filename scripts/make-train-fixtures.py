#!/usr/bin/env python3
"""Makes the reference numbers the training tests compare against.

On the tiny Llama fixture (tests/fixtures/tiny-llama) with a PEFT LoRA adapter whose A
and B are both random (B non-zero, so the adapter changes the logits), computes with
transformers + peft in f32:

  * the SFT loss (transformers' causal-LM loss: mean NLL over label tokens) of a batch
    of SFT records in alpaca, sharegpt (multi-turn) and messages layouts;
  * the DPO losses of a batch of preference records, with the policy = model with the
    adapter and the reference = the same model with the adapter disabled, by TRL's
    formulas written out below (sigmoid, sigmoid with label smoothing, IPO).

Token ids and label masks are built from the chat template rendered by transformers
(`apply_chat_template`), with the rule autoif documents: the conversation before an
assistant turn is rendered with the generation prompt, the reply is what rendering the
turn appends, labels cover the reply through its end-of-turn token.

Writes tests/fixtures/train/{sft.jsonl, dpo.jsonl, adapter/, reference.json}.
Run: /work/refenv/bin/python scripts/make-train-fixtures.py
Needs: torch, transformers (5.x), peft, safetensors.
"""

import json
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests/fixtures/tiny-llama"
OUT = ROOT / "tests/fixtures/train"

SFT_RECORDS = [
    {"instruction": "Answer in all capital letters.", "input": "What is the capital of France?", "output": "PARIS IS THE CAPITAL."},
    {"conversations": [
        {"from": "human", "value": "Write the word fox twice."},
        {"from": "gpt", "value": "fox fox"},
        {"from": "human", "value": "Now three times."},
        {"from": "gpt", "value": "fox fox fox"},
    ], "system": "You answer tersely."},
    {"messages": [
        {"role": "user", "content": "def add(a, b):"},
        {"role": "assistant", "content": "    return a + b"},
    ]},
]

DPO_RECORDS = [
    {"prompt": [{"role": "user", "content": "Answer in fewer than 5 words: what colour is the sky?"}],
     "chosen": [{"role": "assistant", "content": "Blue."}],
     "rejected": [{"role": "assistant", "content": "The sky is usually a lovely shade of blue during the day."}]},
    {"instruction": "Respond in lowercase letters only.", "chosen": "the quick brown fox", "rejected": "The Quick Brown Fox"},
    {"prompt": "Write a function that adds two numbers.", "chosen": "def add(a, b):\n    return a + b", "rejected": "print(1)"},
]

BETA = 0.1
LABEL_SMOOTHING = 0.1


def sft_messages(record):
    if "instruction" in record:
        user = record["instruction"]
        if record.get("input"):
            user += "\n" + record["input"]
        msgs = [{"role": "system", "content": record["system"]}] if record.get("system") else []
        return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]
    if "conversations" in record:
        role = {"human": "user", "gpt": "assistant", "system": "system"}
        msgs = [{"role": "system", "content": record["system"]}] if record.get("system") else []
        return msgs + [{"role": role[t["from"]], "content": t["value"]} for t in record["conversations"]]
    return record["messages"]


def preference(record):
    if "instruction" in record:
        return [{"role": "user", "content": record["instruction"]}], record["chosen"], record["rejected"]
    prompt = record["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    reply = lambda r: r if isinstance(r, str) else r[0]["content"]
    return prompt, reply(record["chosen"]), reply(record["rejected"])


class Renderer:
    def __init__(self, tok, eos_ids):
        self.tok = tok
        self.eos_ids = eos_ids

    def render(self, messages, gen):
        return self.tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)

    def encode(self, text):
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def split_turn(self, messages, i):
        prompt = self.render(messages[:i], True)
        full = self.render(messages[: i + 1], False)
        assert full.startswith(prompt)
        return prompt, full[len(prompt):]

    def reply(self, text):
        ids = self.encode(text)
        trained = next((k + 1 for k, t in enumerate(ids) if t in self.eos_ids), len(ids))
        return ids, trained

    def sft(self, messages):
        ids, labels, rendered = [], [], ""
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prompt, reply = self.split_turn(messages, i)
            assert prompt.startswith(rendered)
            p = self.encode(prompt[len(rendered):])
            ids += p
            labels += [False] * len(p)
            r, trained = self.reply(reply)
            ids += r
            labels += [k < trained for k in range(len(r))]
            rendered = prompt + reply
        return ids, labels

    def pair_side(self, prompt_msgs, reply_text):
        msgs = prompt_msgs + [{"role": "assistant", "content": reply_text}]
        prompt, reply = self.split_turn(msgs, len(msgs) - 1)
        ids = self.encode(prompt)
        r, trained = self.reply(reply)
        return ids + r[:trained], [False] * len(ids) + [True] * trained


def padded(seqs):
    width = max(len(ids) for ids, _ in seqs)
    input_ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for row, (ids, lab) in enumerate(seqs):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
        for j, (t, l) in enumerate(zip(ids, lab)):
            if l:
                labels[row, j] = t
    return input_ids, mask, labels


def sequence_logps(model, input_ids, mask, labels):
    """Sum of log p(label token) per sequence (TRL's concatenated_forward, unaveraged)."""
    logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
    targets = labels[:, 1:]
    valid = targets != -100
    logps = torch.gather(logits.log_softmax(-1), 2, targets.clamp(min=0).unsqueeze(2)).squeeze(2)
    return (logps * valid).sum(-1), valid.sum(-1)


def dpo_losses(pc, pr, rc, rr, loss_type, beta, label_smoothing):
    """TRL DPOTrainer.dpo_loss for loss_type sigmoid / ipo."""
    logits = (pc - pr) - (rc - rr)
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing
    else:
        losses = (logits - 1 / (2 * beta)) ** 2
    return losses, beta * (pc - rc), beta * (pr - rr)


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(MODEL)
    base = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    eos_ids = set(base.generation_config.eos_token_id if isinstance(base.generation_config.eos_token_id, list) else [base.generation_config.eos_token_id])
    eos_ids |= {tok.convert_tokens_to_ids("<|im_end|>")}
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(base, config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    model.eval()
    adapter_dir = OUT / "adapter"
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    model.save_pretrained(adapter_dir)
    # peft writes a README we do not need.
    (adapter_dir / "README.md").unlink(missing_ok=True)

    r = Renderer(tok, eos_ids)
    sft = [r.sft(sft_messages(rec)) for rec in SFT_RECORDS]
    input_ids, mask, labels = padded(sft)
    with torch.no_grad():
        sft_loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss.item()

    pairs = [preference(rec) for rec in DPO_RECORDS]
    chosen = [r.pair_side(p, c) for p, c, _ in pairs]
    rejected = [r.pair_side(p, rj) for p, _, rj in pairs]
    input_ids, mask, labels = padded(chosen + rejected)
    n = len(pairs)
    with torch.no_grad():
        policy, lengths = sequence_logps(model, input_ids, mask, labels)
        with model.disable_adapter():
            reference, _ = sequence_logps(model, input_ids, mask, labels)
    dpo = {}
    for name, loss_type, ls in [("sigmoid", "sigmoid", 0.0), ("sigmoid_smoothed", "sigmoid", LABEL_SMOOTHING), ("ipo", "ipo", 0.0)]:
        p, ref = (policy / lengths, reference / lengths) if loss_type == "ipo" else (policy, reference)
        losses, cr, rr = dpo_losses(p[:n], p[n:], ref[:n], ref[n:], loss_type, BETA, ls)
        dpo[name] = {"loss_type": loss_type, "beta": BETA, "label_smoothing": ls, "loss": losses.mean().item(),
                     "losses": losses.tolist(), "chosen_rewards": cr.tolist(), "rejected_rewards": rr.tolist()}

    with open(OUT / "sft.jsonl", "w") as f:
        for rec in SFT_RECORDS:
            f.write(json.dumps(rec) + "\n")
    with open(OUT / "dpo.jsonl", "w") as f:
        for rec in DPO_RECORDS:
            f.write(json.dumps(rec) + "\n")
    reference_out = {
        "sft": {"ids": [ids for ids, _ in sft], "labels": [lab for _, lab in sft], "loss": sft_loss},
        "dpo": {"chosen_ids": [ids for ids, _ in chosen], "rejected_ids": [ids for ids, _ in rejected],
                "chosen_labels": [lab for _, lab in chosen], "rejected_labels": [lab for _, lab in rejected],
                "policy_logps": policy.tolist(), "reference_logps": reference.tolist(), **dpo},
    }
    with open(OUT / "reference.json", "w") as f:
        json.dump(reference_out, f, indent=1)
    print(f"sft loss {sft_loss:.6f}; dpo sigmoid {dpo['sigmoid']['loss']:.6f}, ipo {dpo['ipo']['loss']:.6f}")


if __name__ == "__main__":
    main()
