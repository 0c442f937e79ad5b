"""The benchmark's reference patterns (the shapes of the shared FlexAttention anchors), in .attn.

One table for the benchmark, the training check, the GPU tests and the cost tests."""

PATTERNS = {
    "local": "local(256)",
    "causal_local": "causal & local(256)",
    "longformer": "local(256) | global(16)",
    "bigbird": "local(127) | global(128) | random(3, block=64)",
    "strided": "causal & (local(isqrt(n) - 1) | stride(isqrt(n)))",
    "fixed": "causal & fixed(isqrt(n), 8)",
    "dilated": "local(256, dilation=4)",
    "streaming": "causal & (sink(4) | local(1024))",
    "prefix_lm": "causal | (queries(0, 2048) & keys(0, 2048))",
    "causal": "causal",
}
