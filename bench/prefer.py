"""Preference tuning: ft_nb's DPO against plain TRL DPOTrainer on the same model and pairs, and ft_nb's SFT on the same
model as the memory reference; each run its own process, measured in one run.

Model: the throughput bench's tiny Llama shape (hidden 192, 4 layers, SmolLM2's tokenizer with ChatML added, so both
trainers render the same chat template). Pairs: the first 200 records of the real alpaca_en_demo.json, the record's own
output chosen and the next record's output rejected (a real reply to another question); 50 more held out. LoRA r=16 on
q/k/v/o, batch 4 x 4, lr 5e-5, cosine with 3% warm-up, beta 0.1, one epoch, fp32 on the CPU, for every run.

- ft_nb dpo: `ft_nb train CONFIG.yaml` with `method: dpo` (the whole process: start-up, data preparation, training, saving);
- trl dpo:   DPOTrainer with a peft_config and conversational prompt/chosen/rejected rows: its own tokenization, padding,
             truncation (max_length 1024) and the rest of its defaults; the same optimisation settings;
- ft_nb sft: `ft_nb train` on the prompt -> chosen records, for the peak-memory ratio (goal: DPO within 1.3x of SFT).

Reported: seconds (whole process), training-loop seconds, pad fraction of the batches, peak RSS, held-out reward accuracy
(each trainer's own evaluation). Run: python bench/prefer.py [--pairs N]"""
import argparse, json, os, sys, tempfile, warnings
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
from throughput import DATA, TARGETS, _pad_fraction, run_process

OPT = dict(per_device_train_batch_size=4, gradient_accumulation_steps=4, learning_rate=5e-5, warmup_steps=0.03, lr_scheduler_type='cosine',
           num_train_epochs=1, logging_steps=10, save_strategy='no', seed=0, report_to='none', use_cpu=True, bf16=False)

def build(work, n:int):
    "The base (ChatML tokenizer), the pairs as JSON, and the SFT records."
    import torch
    from transformers import AutoTokenizer, LlamaConfig, AutoModelForCausalLM
    from ft_nb.data import fix_tokenizer
    tok = fix_tokenizer(AutoTokenizer.from_pretrained(DATA/'tokenizers'/'smollm2'), template='chatml')
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=3, num_key_value_heads=3,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(work/'base'); tok.save_pretrained(work/'base')
    recs = json.loads((DATA/'datasets'/'alpaca_en_demo.json').read_text())[:n + 51]
    ask = lambda r: r['instruction'] + (f"\n\n{r['input']}" if r.get('input') else '')
    pairs = [{'prompt': ask(r), 'chosen': r['output'], 'rejected': recs[i + 1]['output']} for i, r in enumerate(recs[:-1])]
    (work/'pairs.json').write_text(json.dumps(pairs[:n])); (work/'held.json').write_text(json.dumps(pairs[n:]))
    (work/'sft.json').write_text(json.dumps([{'instruction': p['prompt'], 'output': p['chosen']} for p in pairs[:n]]))

def yaml_run(work, name, data, extra=''):
    (work/f'{name}.yaml').write_text(f"model: {work/'base'}\nquant: null\ndata: {work/data}\noutput_dir: {work/name}\nprogress: none\n"
                                     f"lora: {{r: 16, alpha: 32, targets: [{', '.join(TARGETS)}]}}\n{extra}"
                                     + ''.join(f'{k}: {v}\n' for k, v in OPT.items() if k not in ('report_to', 'use_cpu', 'bf16', 'save_strategy'))
                                     + "save_strategy: 'no'\n")
    wall, rss, out = run_process([str(Path(sys.executable).parent/'ft_nb'), 'train', str(work/f'{name}.yaml')], env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    m = json.loads(out[out.index('{'):])
    return {'seconds': wall, 'rss_mb': rss, 'train_seconds': m['train_seconds'], 'steps': m['steps']}

def worker_trl(work):
    "Plain TRL: DPOTrainer with its defaults, conversational rows, LoRA through peft_config."
    import datasets, time
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    tok = AutoTokenizer.from_pretrained(work/'base')
    conv = lambda rows: datasets.Dataset.from_list([{'prompt': [{'role': 'user', 'content': p['prompt']}], 'chosen': [{'role': 'assistant', 'content': p['chosen']}],
                                                     'rejected': [{'role': 'assistant', 'content': p['rejected']}]} for p in rows])
    tr = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(work/'base'), args=DPOConfig(output_dir=str(work/'trl'), **OPT),
                    train_dataset=conv(json.loads((work/'pairs.json').read_text())), eval_dataset=conv(json.loads((work/'held.json').read_text())),
                    processing_class=tok, peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS))
    real, pad = _pad_fraction(tr)
    t = time.perf_counter(); tr.train(); secs = time.perf_counter() - t
    return {'train_seconds': secs, 'pad_fraction': pad, 'reward_accuracy': tr.evaluate()['eval_rewards/accuracies']}

def ft_nb_pad(work)->float:
    "The pad fraction of the batches ft_nb's DPO trainer makes on the same pairs (collation only)."
    from ft_nb.models import load_model
    from ft_nb.methods import apply_method
    from ft_nb.prefer import _prefer_classes, prefer_config, prepare_preferences
    model, tok = load_model(str(work/'base'), quant=None)
    ds, _ = prepare_preferences(work/'pairs.json', tok)
    tr = _prefer_classes()['dpo'](model=apply_method(model, 'lora', targets=TARGETS), train_dataset=ds, processing_class=tok,
                                  args=prefer_config('dpo', work/'pad', **{k: v for k, v in OPT.items() if k not in ('use_cpu', 'bf16', 'report_to')}))
    return _pad_fraction(tr)[1]

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--pairs', type=int, default=200)
    ap.add_argument('--worker', choices=['trl'], help=argparse.SUPPRESS)
    ap.add_argument('--work', help=argparse.SUPPRESS)
    a = ap.parse_args()
    warnings.filterwarnings('ignore')
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error(); hf_logging.disable_progress_bar()
    if a.worker: print(json.dumps(worker_trl(Path(a.work)))); return
    work = Path(tempfile.mkdtemp())
    build(work, a.pairs)
    res = {'ft_nb sft': yaml_run(work, 'sft', 'sft.json')}
    res['ft_nb dpo'] = yaml_run(work, 'dpo', 'pairs.json', f"method: dpo\nadapter: lora\nbeta: 0.1\neval_data: {work/'held.json'}\n")
    m = json.loads((work/'dpo'/'metrics.json').read_text())
    res['ft_nb dpo'].update(pad_fraction=ft_nb_pad(work), reward_accuracy=m['reward_accuracy_after'])
    wall, rss, out = run_process([sys.executable, __file__, '--worker', 'trl', '--work', str(work)], env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    res['trl dpo'] = {'seconds': wall, 'rss_mb': rss, **json.loads(out.strip().splitlines()[-1])}
    f = lambda v, d=1: '' if v is None else f'{v:.{d}f}'
    print('| run | seconds | training loop s | pad fraction | peak RSS MB | held-out reward accuracy |\n|---|---|---|---|---|---|')
    for k, r in res.items():
        print(f"| {k} | {f(r['seconds'])} | {f(r['train_seconds'])} | {f(r.get('pad_fraction'), 3)} | {r['rss_mb']:.0f} | {f(r.get('reward_accuracy'), 2)} |")
    d, t, s = res['ft_nb dpo'], res['trl dpo'], res['ft_nb sft']
    print(f"\nft_nb DPO vs plain TRL DPO: {t['seconds'] / d['seconds']:.2f}x faster as a process, {t['train_seconds'] / d['train_seconds']:.2f}x in the training loop; "
          f"peak RSS {d['rss_mb'] / t['rss_mb']:.2f}x TRL's and {d['rss_mb'] / s['rss_mb']:.2f}x ft_nb SFT's on the same model (goal <= 1.3x)")
    (Path(__file__).parent/'prefer_results.json').write_text(json.dumps(res, indent=2))

if __name__ == '__main__': main()
