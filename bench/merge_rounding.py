"How far independent bf16 roundings of one merged fp32 model land from it (max |Δlogit| on the merge check's prompts): the spread behind `ft_nb.merge.FLOOR_SPREAD`. Usage: python bench/merge_rounding.py ADAPTER_DIR [DRAWS]"
import json, sys
import torch
from ft_nb.generation import FIXED_PROMPTS, logit_gap, prompt_logits
from ft_nb.models import compute_dtype
from ft_nb.merge import _attach, _base_config, _how_trained, _rebuilt_base, read_adapter

def main(ad, draws=8):
    info = read_adapter(ad, False); base = info['base']; cfg = _base_config(base, base)
    mode, tb, _ = _how_trained(info, cfg, 'auto', False)
    model, tok = _rebuilt_base(base, cfg, ad, tb, compute_dtype(tb.get('dtype') or 'bf16'), torch.float32)   # as merge_adapter rebuilds it
    pm = _attach(model, ad, base)
    ref = prompt_logits(pm, tok, FIXED_PROMPTS)
    merged = pm.merge_and_unload()
    exact = {k: v.clone() for k, v in merged.state_dict().items()}
    g, gaps = torch.Generator().manual_seed(0), []
    for i in range(draws):   # draw 0: the exact weights rounded; the others jittered below bf16's last digit first, then rounded
        with torch.no_grad():
            for n, p in merged.named_parameters():
                w = exact[n] if i == 0 else exact[n] * (1 + (torch.rand(exact[n].shape, generator=g) - .5) * 2**-9)
                p.copy_(w.to(torch.bfloat16).float())
        gaps.append(round(logit_gap(ref, prompt_logits(merged.to(torch.bfloat16), tok, FIXED_PROMPTS))['max_dlogit'], 4))
        merged.float()
    print(json.dumps(dict(adapter=ad, mode=mode, max_dlogit_vs_fp32=gaps, spread=round(max(gaps) / min(gaps), 3))))

if __name__ == '__main__': main(sys.argv[1], *map(int, sys.argv[2:]))
