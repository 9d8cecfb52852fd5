#!/usr/bin/env python3
"""Writes the golden generation prompts of `owl2 generate` / `owl2 chat` (spec sections 3.4 and 6).

Output: tests/fixtures/tokenizer/generation_prompts.json. Each case is a conversation (user messages, the
replies so far, whether the first message has an image) with:
  prompt, ids                    the prompt as the reference CLI builds it (serve/cli.py: the first message is
                                 "<|image|>" + text, later ones as typed; TWO_NO_SYS / TWO layout, ends with
                                 "ASSISTANT:"), and its tokenizer_image_token ids
  training_prompt, training_ids  the same conversation completed with `answer`, in the training layout
                                 ("<|image|>\n" + text, spec section 3.5)
Replies in the history are the reply text followed by sep2 "</s>" once. A message with a typed <|image|> is
built as the reference's conversation class does for a message that carries an image (placeholders removed,
text stripped, one placeholder in front).

The ids come from the same reference tokenizer as make_tokenizer_golden.py (transformers' SentencePieceBackend
configured as LLaMA's slow tokenizer) on tests/fixtures/tokenizer/tiny_llama.model, which this script only reads.

Run: .venv/bin/python scripts/make_prompt_golden.py
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_tokenizer_golden import IMAGE, OUT, VICUNA_SYSTEM, SlowLlama, image_token_ids, prompt_of  # noqa: E402


def first_message(text, image):
    """The first user message: the CLI's "<|image|>" + text; a typed placeholder is handled as the
    conversation class does (removed, text stripped, one placeholder in front)."""
    if not image:
        return text
    if IMAGE in text:
        return IMAGE + text.replace(IMAGE, "").strip()
    return IMAGE + text


def cli_prompt(template, turns, image):
    """serve/cli.py: messages appended in turn, get_prompt() with the generation role left empty."""
    messages = []
    for i, t in enumerate(turns):
        messages.append(("USER", first_message(t["user"], image) if i == 0 else t["user"]))
        messages.append(("ASSISTANT", t["reply"]))
    seps = [" ", "</s>"]
    ret = VICUNA_SYSTEM + seps[0] if template == "vicuna_v1" else ""
    for i, (role, message) in enumerate(messages):
        ret += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
    return ret


CASES = [
    ("image first turn", "mplug_owl2", True,
     [{"user": "What is in the picture?", "reply": None}], "A red circle."),
    ("second turn", "mplug_owl2", True,
     [{"user": "What is in the picture?", "reply": "A red circle."},
      {"user": "Where is it?", "reply": None}], "On the left."),
    ("text-only turn", "mplug_owl2", False,
     [{"user": "Text only question 12?", "reply": None}], "Text only answer 34."),
    ("typed placeholder", "mplug_owl2", True,
     [{"user": " Compare <|image|> with the square ", "reply": None}], "The first is larger."),
    ("vicuna_v1 image first turn", "vicuna_v1", True,
     [{"user": "Describe the image briefly.", "reply": None}], "Two shapes."),
]


def main():
    tok = SlowLlama(os.path.join(OUT, "tiny_llama.model"))
    cases = []
    for name, template, image, turns, answer in CASES:
        prompt = cli_prompt(template, turns, image)
        conv = []
        for i, t in enumerate(turns):
            user = t["user"]
            if i == 0 and image:
                user = IMAGE + user.replace(IMAGE, "")  # a training sample marks its image the same way
            conv.append({"from": "human", "value": user})
            conv.append({"from": "gpt", "value": t["reply"] if t["reply"] is not None else answer})
        training = prompt_of(template, conv)
        cases.append({"name": name, "template": template, "image": image, "turns": turns, "answer": answer,
                      "prompt": prompt, "ids": image_token_ids(tok, prompt),
                      "training_prompt": training, "training_ids": image_token_ids(tok, training)})
    path = os.path.join(OUT, "generation_prompts.json")
    with open(path, "w") as f:
        rows = ",\n  ".join(json.dumps(c, ensure_ascii=False) for c in cases)
        f.write(f'{{"model": "tiny_llama.model", "cases": [\n  {rows}\n]}}\n')
    print(f"wrote {path}: {len(cases)} cases")


if __name__ == "__main__":
    main()
