#!/usr/bin/env python3
"""Trains the small LLaMA-style SentencePiece model used by the tokenizer tests and writes golden token ids.

Outputs (tests/fixtures/tokenizer/):
  tiny_llama.model  BPE, 1000 pieces, with LLaMA's normalizer settings: identity normalization, no whitespace
                    collapsing, dummy prefix, byte fallback, split digits; unk 0, bos 1, eos 2, no pad piece.
  conversations.json  chat-template prompts with input ids and masked labels (spec sections 3.4, 3.5) for both
                    templates, computed with the same reference tokenizer and the per-round length arithmetic.
  golden.json       for each case: HF-style encode (BOS + pieces, literal <s>/</s>/<unk> become special ids),
                    the image-placeholder encode (split on <|image|>, each chunk encoded alone, first BOS only,
                    chunks joined with -200) and decode (special tokens skipped).

The reference ids come from transformers' SentencePieceBackend (the sentencepiece-wrapping slow tokenizer
class of transformers 5.x) configured as LLaMA's slow tokenizer: legacy=True, BOS prepended, bos/eos/unk special.
Decode strings come from the sentencepiece package (ids 0, 1, 2 and negative ids dropped, then DecodeIds), which
is what the slow LlamaTokenizer does with skip_special_tokens=True.

Run: .venv/bin/python scripts/make_tokenizer_golden.py
"""
import json
import os
import random

import sentencepiece as spm
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
IMAGE = "<|image|>"

WORDS = ("the a an of to and in is it that on with for as was this are by be at from or have not but "
         "image picture photo shows describe what where which color red green blue yellow circle square "
         "triangle left right top bottom centre center large small shape shapes there one two three four "
         "five question answer user assistant chat curious human artificial intelligence gives helpful "
         "detailed polite answers questions between Describe What Where The A USER ASSISTANT Answer "
         "Please briefly caption option options letter choose correct following given dog cat man woman "
         "standing sitting table street car bus train sky water tree grass building people holding").split()


def corpus(n_lines=4000, seed=0):
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 16))]
        if rng.random() < 0.3:
            words.insert(rng.randint(0, len(words)), str(rng.randint(0, 2024)))
        line = " ".join(words)
        if rng.random() < 0.5:
            line = line[0].upper() + line[1:] + rng.choice([".", "?", "!", ":"])
        if rng.random() < 0.2:
            line = "USER: " + line + " ASSISTANT: " + " ".join(rng.choice(WORDS) for _ in range(4))
        lines.append(line)
    lines += ["café naïve résumé", "The answer is (A).", "A. red\nB. green\nC. blue"]
    return lines


def train():
    os.makedirs(OUT, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_prefix=os.path.join(OUT, "tiny_llama"), model_type="bpe",
        vocab_size=1000, character_coverage=1.0, byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>", num_threads=1, minloglevel=2)
    os.remove(os.path.join(OUT, "tiny_llama.vocab"))


class SlowLlama(SentencePieceBackend):
    """LLaMA's slow tokenizer on the sentencepiece backend: BOS in front, legacy chunk handling."""

    def __init__(self, vocab_file):
        super().__init__(vocab_file=vocab_file, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                         legacy=True, special_tokens_pattern="bos", clean_up_tokenization_spaces=False)


def image_token_ids(tok, prompt):
    """Placeholder handling as spec section 3.2 states it (each chunk tokenized alone, first BOS kept)."""
    chunks = [tok(c).input_ids for c in prompt.split(IMAGE)]
    out = list(chunks[0])
    for c in chunks[1:]:
        out.append(-200)
        out.extend(c[1:] if c and c[0] == tok.bos_token_id else c)
    return out


CASES = [
    "",
    "Hello world",
    "The image shows a red circle on the left.",
    " leading space",
    "two  spaces and trailing space ",
    "ASSISTANT: ",
    "ASSISTANT:",
    "line one\nline two\n\n",
    "numbers 12345 and 2024",
    "unicode café 日本 ✓",
    "USER: What is it? ASSISTANT: A square.</s>USER: And the colour? ASSISTANT: Blue.</s>",
    "special <s> inside </s> and <unk> text",
    "<|image|>",
    "<|image|>\nDescribe the image.",
    "USER: <|image|>\nWhat shape is there? ASSISTANT: A triangle.</s>",
    "USER: <|image|>What is in the picture? ASSISTANT:",
    "First <|image|> then <|image|> and more <|image|><|image|> end",
    "A chat between a curious user and an artificial intelligence assistant. USER: <|image|>\nHi ASSISTANT: Hello</s>",
]


VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def prompt_of(template, turns):
    """Training prompt: image placeholders to the front of their turn with a newline, TWO-separator layout."""
    system = VICUNA_SYSTEM if template == "vicuna_v1" else ""
    if turns and turns[0]["from"] == "system":
        system, turns = turns[0]["value"].strip(), turns[1:]
    if turns and turns[0]["from"] == "gpt":
        turns = turns[1:]
    out = system + " " if system else ""
    for i, t in enumerate(turns):
        v = t["value"]
        k = v.count(IMAGE)
        if k:
            v = (IMAGE * k + "\n" + v.replace(IMAGE, "").strip()).strip()
        role, end = ("USER", " ") if i % 2 == 0 else ("ASSISTANT", "</s>")
        out += f"{role}: {v}{end}" if v else f"{role}:"
    return out


def masked(tok, prompt):
    """Labels by per-round lengths: instruction = len(tok(part)) - 2 masked, round advances len(tok(round))."""
    ids = image_token_ids(tok, prompt)
    labels = list(ids)
    total = sum(1 for i in ids if i != 0)
    sep = " ASSISTANT: "
    cur = 1
    labels[0] = -100
    for rnd in prompt.split("</s>"):
        if rnd == "":
            break
        parts = rnd.split(sep)
        if len(parts) != 2:
            break
        instruction = len(image_token_ids(tok, parts[0] + sep)) - 2
        labels[cur:cur + instruction] = [-100] * len(labels[cur:cur + instruction])
        cur += len(image_token_ids(tok, rnd))
    labels[cur:] = [-100] * len(labels[cur:])
    mismatch = cur != total
    if mismatch:
        labels = [-100] * len(ids)
    labels = [-100 if i == -200 else l for i, l in zip(ids, labels)]
    return ids, labels, mismatch


CONVERSATIONS = [
    ("mplug_owl2", [{"from": "human", "value": "<|image|>\nWhat shape is there?"},
                    {"from": "gpt", "value": "A red circle."}]),
    ("mplug_owl2", [{"from": "human", "value": "What colour is the square? <|image|>"},
                    {"from": "gpt", "value": "Blue."},
                    {"from": "human", "value": "And where is it?"},
                    {"from": "gpt", "value": "On the left, near the top."}]),
    ("vicuna_v1", [{"from": "human", "value": "<|image|>\nDescribe the image briefly."},
                   {"from": "gpt", "value": "Two shapes: a green triangle and a yellow square."}]),
    ("vicuna_v1", [{"from": "system", "value": "You are a helpful assistant."},
                   {"from": "human", "value": "Answer with the option letter. A. red B. blue"},
                   {"from": "gpt", "value": "(A)"}]),
    ("mplug_owl2", [{"from": "human", "value": "Compare <|image|> and <|image|> please."},
                    {"from": "gpt", "value": "The first is larger."}]),
    ("mplug_owl2", [{"from": "human", "value": "Text only question 12?"},
                    {"from": "gpt", "value": "Text only answer 34."}]),
    ("mplug_owl2", [{"from": "human", "value": "Repeat after me."},
                    {"from": "gpt", "value": "USER: hi ASSISTANT: hello"}]),
    ("mplug_owl2", [{"from": "human", "value": "Say <unk> please."},
                    {"from": "gpt", "value": "No."}]),
]


def main():
    train()
    model = os.path.join(OUT, "tiny_llama.model")
    tok = SlowLlama(model)
    sp = spm.SentencePieceProcessor(model_file=model)
    assert tok("x").input_ids[0] == 1 and sp.piece_to_id("</s>") == 2 and sp.unk_id() == 0
    cases = []
    for text in CASES:
        ids = tok(text).input_ids
        image_ids = image_token_ids(tok, text)
        decoded = sp.decode([i for i in image_ids if i > 2])
        cases.append({"text": text, "ids": ids, "image_ids": image_ids, "decoded": decoded})
    with open(os.path.join(OUT, "golden.json"), "w") as f:
        rows = ",\n  ".join(json.dumps(c, ensure_ascii=False) for c in cases)
        f.write(f'{{"model": "tiny_llama.model", "vocab_size": {sp.get_piece_size()}, "cases": [\n  {rows}\n]}}\n')
    convs = []
    for template, turns in CONVERSATIONS:
        prompt = prompt_of(template, turns)
        ids, labels, mismatch = masked(tok, prompt)
        convs.append({"template": template, "conversations": turns, "prompt": prompt, "input_ids": ids,
                      "labels": labels, "mismatch": mismatch})
    with open(os.path.join(OUT, "conversations.json"), "w") as f:
        rows = ",\n  ".join(json.dumps(c, ensure_ascii=False) for c in convs)
        f.write(f'{{"model": "tiny_llama.model", "cases": [\n  {rows}\n]}}\n')
    print(f"wrote {OUT}: vocab {sp.get_piece_size()}, {len(cases)} cases")


if __name__ == "__main__":
    main()
