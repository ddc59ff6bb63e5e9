# ruff: noqa  -- the one-shot device check (parity, document mask, bf16 step vs transformers) on a GPU machine
import json, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch, transformers
from phi_assets.training import model as phi
from phi_assets.training import attention
out = {"torch": torch.__version__, "transformers": transformers.__version__, "gpu": torch.cuda.get_device_name(0)}
out["flash_attn"] = attention.flash_attn_kernels() is not None
dev = torch.device("cuda")
def hf_of(cfg, impl):
    f = {k: v for k, v in cfg.hf_config().items() if k not in ("architectures", "model_type", "torch_dtype")}
    return transformers.PhiForCausalLM(transformers.PhiConfig(**f, attn_implementation=impl))
torch.manual_seed(0)
cfg = phi.PhiConfig(vocab_size=4096, hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=8, rotary_dim=16,
                    resid_pdrop=0.0, attention_dropout=0.0)
ours = phi.PhiForCausalLM(cfg).to(dev).eval(); hf = hf_of(cfg, "sdpa").to(dev).eval(); hf.load_state_dict(ours.state_dict())
ids = torch.randint(0, 4096, (4, 512), device=dev)
with torch.no_grad():
    out["parity_fp32_maxabs"] = (ours(ids) - hf(ids).logits).abs().max().item()
    with torch.autocast("cuda", torch.bfloat16):
        out["parity_bf16_maxabs"] = (ours(ids).float() - hf(ids).logits.float()).abs().max().item()
    a, b = ids[:1, :300], ids[:1, 300:]
    pos = torch.cat([torch.arange(300), torch.arange(212)]).to(dev)[None]
    joint = ours(ids[:1], position_ids=pos, cu_seqlens=torch.tensor([0, 300, 512], device=dev))
    out["docmask_fp32_maxabs"] = max((joint[:, :300] - ours(a)).abs().max().item(), (joint[:, 300:] - ours(b)).abs().max().item())
def bench(model, fwd, steps=15, warm=5, bs=8, seq=2048, vocab=51200):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(0, vocab, (bs, seq + 1), device=dev)
    for i in range(warm + steps):
        if i == warm:
            torch.cuda.synchronize(); t = time.perf_counter()
        with torch.autocast("cuda", torch.bfloat16):
            logits = fwd(model, x[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return bs * seq * steps / (time.perf_counter() - t), torch.cuda.max_memory_allocated() / 2**30
for name in ("phi1_small", "phi1"):
    c = phi.RECIPES[name]()
    m = phi.PhiForCausalLM(c).to(dev).train()
    tps, mem = bench(m, lambda mm, x: mm(x), bs=8 if name == "phi1_small" else 4)
    mfu = m.flops_per_token(2048) * tps / 989e12
    out[f"{name}_ours"] = {"tokens_per_s": round(tps), "mfu": round(mfu, 3), "peak_gib": round(mem, 1)}
    del m; torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    h = hf_of(c, "sdpa").to(dev).train()
    tps, mem = bench(h, lambda mm, x: mm(x).logits, bs=8 if name == "phi1_small" else 4)
    out[f"{name}_hf_sdpa"] = {"tokens_per_s": round(tps), "peak_gib": round(mem, 1)}
    del h; torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    print(json.dumps(out), flush=True)
json.dump(out, open(os.path.join(os.environ.get("OUT", "."), "gpu.json"), "w"), indent=1)
print(json.dumps(out, indent=1))
