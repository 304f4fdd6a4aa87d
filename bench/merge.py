"""Merging a QLoRA adapter: ft_nb's `merge_adapter` against the seed recipe, measured in one run.

Two bases, each with a QLoRA adapter trained on it by ft_nb:
- mid:  a 113M-parameter Llama (SmolLM2's tokenizer, hidden 768, 12 layers, tied head), random weights saved in bf16 as hub
        checkpoints are; adapter: 10 steps on the real alpaca_en_demo.json. For time and memory: random weights have logits
        too small for the merges' differences to show.
- demo: ft_nb demo's tiny Llama, pretrained for a few seconds on its tasks, so that its logits have a realistic scale;
        adapter: 20 steps on those tasks. For how close each merge is to the model as trained.
Then, each in its own process:

- seed:  the seed recipe's merge: reload the base in bf16 (grown to the adapter's tokenizer), attach the adapter with PEFT,
         `merge_and_unload`, save;
- ft_nb: `merge_adapter(adapter, out)` (mode auto: the 4-bit base's weights rebuilt from the 16-bit load, verified on
         fixed prompts before anything is written).

Reported for each: on mid, seconds and the peak growth of the heap (RssAnon, sampled every 2 ms) and of RSS counting the
mapped checkpoint (VmHWM), against the merged model's size; on both, max |dlogit| of the saved folder, reloaded with plain
transformers in bf16, against the model as trained (the base loaded in 4-bit plus the adapter) on fixed prompts.

Run: python bench/merge.py   (prints a markdown table; writes only to a temporary folder)"""
import argparse, json, subprocess, sys, tempfile, time, warnings
from pathlib import Path
from ft_nb.generation import FIXED_PROMPTS

DATA = Path(__file__).resolve().parents[1].parent/'shared'/'data'

def build_demo(work):
    "The demo's pretrained tiny base and a QLoRA adapter trained on its tasks; the prompts are three of the tasks."
    import random
    from ft_nb.demo import build_demo_base, demo_example
    from ft_nb.models import load_model
    from ft_nb.train import finetune
    rng = random.Random(0)
    tasks = [demo_example(rng) for _ in range(400)]
    model, tok = load_model(build_demo_base(work/'base', tasks, epochs=4))
    finetune(model, tok, tasks, output_dir=work/'adapter', method='qlora', max_steps=20, learning_rate=1e-2, per_device_train_batch_size=8,
             gradient_accumulation_steps=1, save_strategy='no', progress='none')
    (work/'prompts.json').write_text(json.dumps([r['instruction'] for r in tasks[:3]]))

def build_mid(work):
    "The bf16 113M base and a QLoRA adapter trained on it; (parameters, merged bytes)."
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig
    from ft_nb.models import load_model
    from ft_nb.train import finetune
    tok = AutoTokenizer.from_pretrained(DATA/'tokenizers'/'smollm2')
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                      num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
    model.save_pretrained(work/'base'); tok.save_pretrained(work/'base')
    n = sum(p.numel() for p in model.parameters())
    del model
    model, tok = load_model(str(work/'base'))
    finetune(model, tok, DATA/'datasets'/'alpaca_en_demo.json', output_dir=work/'adapter', method='qlora', max_steps=10, learning_rate=1e-2,
             max_length=128, per_device_train_batch_size=4, gradient_accumulation_steps=1, save_strategy='no', progress='none')
    (work/'prompts.json').write_text(json.dumps(FIXED_PROMPTS))
    return n, 2 * n

def worker_trained(work):
    "Logits of the model as trained: the base in 4-bit plus the adapter."
    import torch
    from peft import PeftModel
    from ft_nb.generation import prompt_logits
    from ft_nb.models import load_model
    m4, tok = load_model(str(work/'base'), quant='4bit', dtype='fp32', tokenizer=str(work/'adapter'))
    torch.save(prompt_logits(PeftModel.from_pretrained(m4, str(work/'adapter')), tok, json.loads((work/'prompts.json').read_text())), work/'trained.pt')

def worker_seed(work):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, tok = AutoModelForCausalLM.from_pretrained(work/'base', dtype=torch.bfloat16), AutoTokenizer.from_pretrained(work/'adapter')
    if len(tok) > model.get_input_embeddings().weight.shape[0]: model.resize_token_embeddings(len(tok))   # tokens added in training
    merged = PeftModel.from_pretrained(model, str(work/'adapter')).merge_and_unload()
    merged.save_pretrained(work/'seed'); tok.save_pretrained(work/'seed')

def worker_ft_nb(work):
    from ft_nb.merge import merge_adapter
    merge_adapter(work/'adapter', work/'ft_nb', dtype='bf16', prompts=json.loads((work/'prompts.json').read_text()))

def worker_gap(work, name):
    "The saved folder, reloaded with plain transformers, against the model as trained."
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from ft_nb.generation import logit_gap, prompt_logits
    model = AutoModelForCausalLM.from_pretrained(work/name, dtype=torch.bfloat16)
    logits = prompt_logits(model, AutoTokenizer.from_pretrained(work/name), json.loads((work/'prompts.json').read_text()))
    print(json.dumps(logit_gap(torch.load(work/'trained.pt'), logits)))

MEASURE = '''
import sys, json, threading, time, runpy
def status(key): return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
import torch, transformers, peft, bitsandbytes, ft_nb.merge
peak, done = [0], threading.Event()
def sample():
    while not done.is_set(): peak[0] = max(peak[0], status("RssAnon:")); time.sleep(0.002)
threading.Thread(target=sample, daemon=True).start()
open("/proc/self/clear_refs", "w").write("5")
rss, anon, t = status("VmRSS:"), status("RssAnon:"), time.perf_counter()
sys.argv = [sys.argv[1], "--worker", sys.argv[2], sys.argv[3]]
runpy.run_path(sys.argv[0], run_name="__main__")
done.set()
print(json.dumps({"seconds": time.perf_counter() - t, "anon": peak[0] - anon, "rss": status("VmHWM:") - rss}))
'''

def child(*args):
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    if r.returncode: sys.exit(f'{args} failed:\n{r.stderr[-3000:]}')
    return json.loads(r.stdout.strip().splitlines()[-1])

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--worker', nargs=2, metavar=('NAME', 'WORK'), help=argparse.SUPPRESS)
    a = p.parse_args()
    warnings.filterwarnings('ignore')
    if a.worker:
        name, work = a.worker[0], Path(a.worker[1])
        return worker_gap(work, name.split(':')[1]) if name.startswith('gap:') else globals()[f'worker_{name}'](work)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error(); hf_logging.disable_progress_bar()
    res = {}
    for kind in ('mid', 'demo'):
        work = Path(tempfile.mkdtemp()); t = time.perf_counter()
        built = build_mid(work) if kind == 'mid' else build_demo(work)
        print(f'{kind}: built in {time.perf_counter() - t:.0f} s', file=sys.stderr)
        subprocess.run([sys.executable, __file__, '--worker', 'trained', str(work)], check=True, capture_output=True)
        for name in ('seed', 'ft_nb'):
            r = child('-c', MEASURE, __file__, name, str(work))
            res[kind, name] = {**r, **child(__file__, '--worker', f'gap:{name}', str(work))}
        if kind == 'mid': n, merged = built
    s = res['mid', 'seed']
    print(f'{n/1e6:.0f}M-parameter Llama (bf16, {merged / 1e6:.0f} MB merged) for time and memory; the demo\'s pretrained tiny Llama for the gap\n')
    print('| merge | seconds | heap peak | RSS peak, mapped checkpoint included | max \\|Δlogit\\| vs trained (113M, random) | max \\|Δlogit\\| vs trained (demo base) | time vs seed | heap vs seed |')
    print('|---|---|---|---|---|---|---|---|')
    for name, label in (('seed', 'seed recipe: bf16 base + `merge_and_unload`'), ('ft_nb', 'ft_nb `merge_adapter` (verified)')):
        r, d = res['mid', name], res['demo', name]
        print(f"| {label} | {r['seconds']:.1f} | {r['anon'] / merged:.2f}x | {r['rss'] / merged:.2f}x | {r['max_dlogit']:.3f} | {d['max_dlogit']:.3f} | "
              f"{r['seconds'] / s['seconds']:.2f}x | {r['anon'] / s['anon']:.2f}x |")

if __name__ == '__main__': main()
