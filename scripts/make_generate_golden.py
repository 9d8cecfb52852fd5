#!/usr/bin/env python3
"""Golden beam-search results from HF transformers for tests/test_generate.cpp.

A toy causal LM whose next-token log-probabilities depend on the last token only (a random table, peaked so
that beams and greedy disagree) runs `generate()` with beam search under several settings (beams, length
penalty, early stopping, min_new_tokens, max_new_tokens; EOS = 0). The C++ test feeds the same table to
owl2's beam search and expects the same best sequence and score. Writes tests/golden/generate_beam.json.
"""
import json
import os

import torch
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

V = 8
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden", "generate_beam.json")


class ToyConfig(PretrainedConfig):
    model_type = "owl2_markov_toy"

    def __init__(self, vocab_size=V, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size


class ToyLM(PreTrainedModel, GenerationMixin):
    config_class = ToyConfig

    def __init__(self, config, table):
        super().__init__(config)
        self.table = torch.nn.Parameter(table, requires_grad=False)  # [V, V] log-probs of the next token

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return CausalLMOutputWithPast(logits=self.table[input_ids])


def main():
    torch.manual_seed(0)
    table = (torch.randn(V, V, dtype=torch.float64) * 2.0).log_softmax(-1).float()
    model = ToyLM(ToyConfig(), table).eval()
    cases = []
    settings = [dict(num_beams=n, length_penalty=lp, early_stopping=es, min_new_tokens=mn, max_new_tokens=mx)
                for n in (2, 3, 4) for lp in (1.0, 0.0, 2.0, -0.5) for es in (False, True, "never")
                for mn, mx in ((0, 6), (3, 5))]
    for i, s in enumerate(settings):
        start = i % V
        with torch.no_grad():
            out = model.generate(torch.tensor([[start]]), do_sample=False, eos_token_id=0, pad_token_id=0,
                                 use_cache=False, output_scores=True, return_dict_in_generate=True, **s)
        seq = out.sequences[0, 1:].tolist()
        cases.append(dict(start=start, **s, tokens=seq, score=float(out.sequences_scores[0])))
    with open(OUT, "w") as f:
        json.dump({"vocab_size": V, "eos": 0, "table": table.tolist(), "cases": cases}, f, indent=0)
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
