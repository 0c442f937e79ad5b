"""A transformers Llama whose attention is a patternc pattern (StreamingLLM: 4 sinks + a window).

    python examples/hf_llama.py

Builds a tiny Llama from its config (no download), trains it for a few steps on a padded batch,
and generates greedily with the pattern-shaped cache, checking that cached generation gives the
same tokens as uncached.  Runs on the CPU in seconds; on a GPU it uses the Triton kernels.
"""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import patternc

STREAMING = "pattern streaming(sinks = 4, w = 32) = causal & (sink(sinks) | local(w))"


def main() -> None:
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    attn = patternc.load(STREAMING)          # or: import the module `patternc compile` wrote
    name = attn.register_hf()                # "patternc_streaming": attention + its padding mask

    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=name).to(device)

    # Training: a right-padded batch; padding reaches the kernels as each row's length.
    ids = torch.randint(0, 256, (2, 48), device=device)
    mask = torch.ones_like(ids)
    mask[1, 40:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(3):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        print(f"step {step}: loss {loss.item():.4f}")

    # Generation: the pattern-shaped cache keeps the 4 sinks and the window, nothing else.
    model.eval()
    prompt = ids[:1, :16]
    cache = attn.hf_cache(model)
    cached = model.generate(prompt, max_new_tokens=64, do_sample=False, cache=cache)
    uncached = model.generate(prompt, max_new_tokens=64, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached), "cached and uncached generation differ"
    print(f"generated {cached.shape[1] - prompt.shape[1]} tokens; cached == uncached")
    print(f"cache layer 0: {cache.layers[0].kv}")


if __name__ == "__main__":
    main()
