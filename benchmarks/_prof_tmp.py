import sys, time, cProfile, pstats, io, torch
sys.path.insert(0, "benchmarks")
import patternc
from patterns import PATTERNS
g = torch.Generator(device="cpu").manual_seed(0)
q, k, v, do = (torch.randn(1, 16, 16384, 64, generator=g).to("cuda", torch.bfloat16) for _ in range(4))
qg, kg, vg = (t.detach().requires_grad_(True) for t in (q, k, v))
mod = patternc.load(patternc.parse(f"pattern p_causal_local = {PATTERNS['causal_local']}"), backend="triton")
def fb():
    o = mod.attention(qg, kg, vg)
    torch.autograd.grad(o, (qg, kg, vg), do)
for _ in range(10): fb()
torch.cuda.synchronize()
for label, fn in (("fwd", lambda: mod.attention(q, k, v)), ("fwd+bwd", fb)):
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(50): fn()
    print(label, f"host {(time.perf_counter() - t0) / 50 * 1e6:.0f} us/call"); torch.cuda.synchronize()
pr = cProfile.Profile(); pr.enable()
for _ in range(50): fb()
pr.disable(); torch.cuda.synchronize()
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(22); print(s.getvalue()[:6000])
