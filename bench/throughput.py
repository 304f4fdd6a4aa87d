"""Training throughput: ft_nb's defaults against the seed recipe and plain TRL, one epoch each, measured in one run.

Same tiny Llama (SmolLM2's tokenizer, hidden 192, 4 layers: about 11M parameters), the real alpaca_en_demo.json (the
last 100 records held out), the same Alpaca prompt (Stanford's PROMPT_DICT), LoRA r=16 on q/k/v/o, the seed's
optimisation settings (batch 4 x 4, lr 2e-4, 3% warm-up, cosine), one epoch, fp32 on the CPU:

- seed:  every example padded to 512 (pad = EOS), labels = input_ids with pads masked, SFTTrainer, gradient checkpointing
         (as `prepare_model_for_kbit_training` turns it on);
- trl:   plain SFTTrainer on prompt/completion records: TRL tokenizes, pads per batch, its default checkpointing;
- ft_nb: the whole `ft_nb train CONFIG.yaml` process (start-up, data preparation and the checkpoint included), then a
         second such process on the same file, whose tokenized data comes from ft_nb's cache;
- bare:  the compute floor's nearest runnable reference: a plain torch loop over ft_nb's tokenized rows, each example its
         own forward (no padding at all), the same model, LoRA, optimizer, schedule and optimizer steps; no Trainer, no
         logging. Only its training loop is timed (imports, model load and tokenization are not).

Reported for each: seconds, real (non-pad) tokens per second, pad fraction, peak RSS of the process, the mean loss per
reply token on the 100 held-out records (the same labels for all), and model FLOPs utilisation (MFU): the FLOPs the
run must do on the real tokens (`train_flops`: forward and backward of the LoRA model, LM head and attention
included) over the seconds taken times this machine's dense matmul rate for the model's own shapes and dtype,
measured in the same run (`worker_matmul`). MFU is given for the training loop alone (`trainer.train()`, the bare
loop) and for the whole process. Each run is its own process.

Run: python bench/throughput.py [--records N]   (prints a markdown table; writes only to a temporary folder)
GPU variant: python bench/throughput.py --gpu   (a 0.5B-size config, bf16, and torch.cuda.max_memory_allocated for each run)"""
import argparse, json, math, os, subprocess, sys, tempfile, time, warnings
from pathlib import Path

DATA = Path(os.environ.get('FT_NB_DATA') or Path(__file__).resolve().parents[1].parent/'shared'/'data')   # FT_NB_DATA: a copy elsewhere (the GPU machine)
TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj']
GPU = os.environ.get('FT_NB_BENCH_GPU') == '1'
OPT = dict(per_device_train_batch_size=4, gradient_accumulation_steps=4, learning_rate=2e-4, warmup_steps=0.03, lr_scheduler_type='cosine',
           num_train_epochs=1, report_to='none', save_strategy='no', logging_steps=10, seed=0,
           **(dict(bf16=True) if GPU else dict(use_cpu=True, bf16=False)))
SIZES = {'cpu': dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=3, num_key_value_heads=3),   # ~11M
         'gpu': dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2)}  # Qwen2.5-0.5B's shape
PROMPT = {  # Stanford Alpaca's PROMPT_DICT
    'input': ('Below is an instruction that describes a task, paired with an input that provides further context. Write a response that '
              'appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n'),
    'no_input': ('Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n'
                 '### Instruction:\n{instruction}\n\n### Response:\n')}

def prompt(r): return PROMPT['input' if r.get('input') else 'no_input'].format(**r)

def build_base(work):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig
    tok = AutoTokenizer.from_pretrained(DATA/'tokenizers'/'smollm2')
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), **SIZES['gpu' if GPU else 'cpu'], tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    model = AutoModelForCausalLM.from_config(cfg)
    if GPU: model = model.to(torch.bfloat16)
    model.save_pretrained(work/'base'); tok.save_pretrained(work/'base')
    return sum(p.numel() for p in model.parameters())

def peft_model(work):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(work/'base', **(dict(dtype='bfloat16', device_map={'': 0}) if GPU else {}))
    return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS))

def worker_seed(work):
    "The seed recipe: pad every example to 512, labels = input_ids with the pads masked."
    import datasets
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    tok = AutoTokenizer.from_pretrained(work/'base')
    tok.pad_token = tok.eos_token
    rows = json.loads((work/'train.json').read_text())
    enc = tok([prompt(r) + r['output'] + tok.eos_token for r in rows], padding='max_length', max_length=512, truncation=True)
    labels = [[t if m else -100 for t, m in zip(ids, mask)] for ids, mask in zip(enc['input_ids'], enc['attention_mask'])]
    ds = datasets.Dataset.from_dict({'input_ids': enc['input_ids'], 'attention_mask': enc['attention_mask'], 'labels': labels})
    model = peft_model(work)
    model.enable_input_require_grads()
    args = SFTConfig(output_dir=str(work/'seed'), gradient_checkpointing=True, dataset_kwargs={'skip_prepare_dataset': True}, max_length=None, **OPT)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    t = time.perf_counter(); trainer.train(); secs = time.perf_counter() - t
    model.save_pretrained(work/'seed')
    real = sum(map(sum, enc['attention_mask']))
    return dict(seconds=secs, real_tokens=real, pad_fraction=1 - real / (512 * len(rows)), **_gpu_memory())

def _pad_fraction(trainer):
    "Share of pad positions in the batches the trainer's dataloader makes (collation only, no model)."
    real = total = 0
    for b in trainer.get_train_dataloader():
        real += int(b['attention_mask'].sum()); total += b['attention_mask'].numel()
    return real, 1 - real / total

def worker_trl(work):
    "Plain TRL: prompt/completion records, SFTTrainer's own tokenization and per-batch padding."
    import datasets
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    tok = AutoTokenizer.from_pretrained(work/'base')
    rows = json.loads((work/'train.json').read_text())
    ds = datasets.Dataset.from_dict({'prompt': [prompt(r) for r in rows], 'completion': [r['output'] for r in rows]})
    trainer = SFTTrainer(model=peft_model(work), args=SFTConfig(output_dir=str(work/'trl'), **OPT), train_dataset=ds, processing_class=tok)
    real, pad = _pad_fraction(trainer)
    t = time.perf_counter(); trainer.train(); secs = time.perf_counter() - t
    trainer.model.save_pretrained(work/'trl')
    return dict(seconds=secs, real_tokens=real, pad_fraction=pad, **_gpu_memory())

def train_flops(cfg:dict, lengths, r:int=16, targets=TARGETS)->dict:
    """FLOPs one epoch must do on examples of `lengths` real tokens: forward and backward of a LoRA model whose base is frozen.

    Per token: the frozen linear layers (LM head included) cost 2N forward and 2N backward (gradients of their inputs;
    no weight gradients), the adapters 2n forward and 4n backward (n = LoRA parameters); attention (QK^T and AV, the full
    s x s square as MFU is usually counted) costs 4*layers*s*heads*head_dim forward and twice that backward. `usual_6n` is
    TRL's `compute_flops_per_token` (the full fine-tuning convention, backward = 2x forward), for comparison with published MFU figures."""
    from types import SimpleNamespace
    from trl.trainer.utils import compute_flops_per_token
    d, L, ff, V = cfg['hidden_size'], cfg['num_hidden_layers'], cfg['intermediate_size'], cfg['vocab_size']
    h, kv = cfg['num_attention_heads'], cfg.get('num_key_value_heads') or cfg['num_attention_heads']
    hd = cfg.get('head_dim') or d // h
    shapes = {'q_proj': (d, h * hd), 'k_proj': (d, kv * hd), 'v_proj': (d, kv * hd), 'o_proj': (h * hd, d),
              'gate_proj': (d, ff), 'up_proj': (d, ff), 'down_proj': (ff, d)}
    N = L * sum(i * o for i, o in shapes.values()) + V * d
    n = L * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)
    tokens = sum(lengths)
    attn = sum(12 * L * s * s * h * hd for s in lengths)
    usual = sum(s * compute_flops_per_token(SimpleNamespace(**cfg), s) for s in lengths)
    return dict(flops=tokens * (4 * N + 6 * n) + attn, usual_6n=usual, linear_params=N, lora_params=n,
                attention_share=attn / (tokens * (4 * N + 6 * n) + attn), shapes=[*shapes.values()] * L + [(d, V)])

def worker_matmul(work):
    "This machine's dense matmul rate (FLOP/s) on the model's own linear shapes and dtype, at the rows of a typical batch, forward and input-gradient products."
    import torch
    cfg = json.loads((work/'base'/'config.json').read_text())
    rows = int(json.loads((work/'lengths.json').read_text())['batch_tokens'])
    dev, dt = ('cuda', torch.bfloat16) if GPU else ('cpu', torch.float32)
    flops = secs = 0.0
    for i, o in train_flops(cfg, [1])['shapes']:
        w = torch.randn(o, i, device=dev, dtype=dt)
        for a, b in ((torch.randn(rows, i, device=dev, dtype=dt), w.t()), (torch.randn(rows, o, device=dev, dtype=dt), w)):   # x W^T, then dy W
            a @ b
            if GPU: torch.cuda.synchronize()
            times = []
            for _ in range(5):
                t = time.perf_counter(); a @ b
                if GPU: torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            flops += 2 * rows * i * o; secs += sorted(times)[2]
    return dict(rate=flops / secs, rows=rows, dtype=str(dt))

def worker_bare(work):
    "A plain torch loop: ft_nb's tokenized rows in a shuffled order, one example per forward (no padding), gradients accumulated over batch x accumulation examples, the Trainer's optimizer, schedule and clipping."
    import torch
    import datasets
    from transformers import Trainer, TrainingArguments, get_cosine_schedule_with_warmup
    rows = datasets.load_from_disk(str(work/'tokenized'))
    examples = [(torch.tensor([r['input_ids']]), torch.tensor(r['labels'][1:])) for r in rows]
    torch.manual_seed(0)
    model = peft_model(work).train()
    params = [p for p in model.parameters() if p.requires_grad]
    cls, kw = Trainer.get_optimizer_cls_and_kwargs(TrainingArguments(output_dir=str(work/'bare'), **OPT))
    opt = cls(params, **kw)
    per_step = OPT['per_device_train_batch_size'] * OPT['gradient_accumulation_steps']
    steps = math.ceil(len(examples) / per_step)
    sched = get_cosine_schedule_with_warmup(opt, math.ceil(OPT['warmup_steps'] * steps), steps)
    order = torch.randperm(len(examples)).tolist()
    t = time.perf_counter()
    for s in range(steps):
        group = [examples[i] for i in order[s * per_step:(s + 1) * per_step]]
        n = sum(int((y != -100).sum()) for _, y in group)
        for x, y in group:
            logits = model(input_ids=x, use_cache=False).logits[0, :-1]
            (torch.nn.functional.cross_entropy(logits.float(), y, ignore_index=-100, reduction='sum') / n).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
    secs = time.perf_counter() - t
    model.save_pretrained(work/'bare')
    return dict(seconds=secs, train_seconds=secs, real_tokens=sum(x.shape[1] for x, _ in examples), pad_fraction=0.0, steps=steps, **_gpu_memory())

def _gpu_memory():
    import torch
    return dict(gpu_gb=torch.cuda.max_memory_allocated() / 2**30) if GPU else {}

def ft_nb_stats(work):
    "Real tokens and pad fraction of ft_nb's batches for the same records (the timed run is the `ft_nb train` process)."
    from ft_nb.data import prepare_dataset
    from ft_nb.models import load_model
    from ft_nb.methods import apply_method
    from ft_nb.train import build_trainer
    model, tok = load_model(str(work/'base'), quant=None)
    ds, _ = prepare_dataset(str(work/'train.json'), tok, template='alpaca')
    trainer = build_trainer(apply_method(model, 'lora', targets=TARGETS), tok, ds, output_dir=str(work/'stats'), progress='none')
    return _pad_fraction(trainer)

def run_process(cmd, **kw):
    "Wall seconds, peak RSS (MB) and stdout of one child process."
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, **kw)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode: sys.exit(f'{cmd} failed with {p.returncode}')
    return time.perf_counter() - t, ru.ru_maxrss / 1024, out

def held_out_loss(work, adapter):
    "Mean loss per reply token on the held-out records, with ft_nb's exact Alpaca labels (the same for every run)."
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from ft_nb.data import prepare_dataset
    tok = AutoTokenizer.from_pretrained(work/'base')
    ds, _ = prepare_dataset(str(work/'held.json'), tok, template='alpaca')
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(work/'base'), adapter).eval()
    total = n = 0
    with torch.no_grad():
        for r in ds:
            k = sum(l != -100 for l in r['labels'][1:])
            total += float(model(input_ids=torch.tensor([r['input_ids']]), labels=torch.tensor([r['labels']])).loss) * k; n += k
    return total / n

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--records', type=int, default=None, help='train on the first N records only (default: all but the 100 held out)')
    ap.add_argument('--gpu', action='store_true', help='the GPU variant: a 0.5B-size config in bf16, with max_memory_allocated')
    ap.add_argument('--worker', choices=['seed', 'trl', 'bare', 'matmul'], help=argparse.SUPPRESS)
    ap.add_argument('--work', help=argparse.SUPPRESS)
    a = ap.parse_args()
    warnings.filterwarnings('ignore')
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error(); hf_logging.disable_progress_bar()
    if a.gpu: os.environ['FT_NB_BENCH_GPU'] = '1'   # read by this module in the worker processes too
    global GPU; GPU = GPU or a.gpu
    if a.worker:
        print(json.dumps(globals()[f'worker_{a.worker}'](Path(a.work)))); return
    work = Path(tempfile.mkdtemp())
    recs = json.loads((DATA/'datasets'/'alpaca_en_demo.json').read_text())
    (work/'train.json').write_text(json.dumps(recs[:-100][:a.records]))
    (work/'held.json').write_text(json.dumps(recs[-100:]))
    n_params = build_base(work)
    real, pad = prepare_tokens(work)
    env = {**os.environ, 'HF_HUB_OFFLINE': '1'}
    res = {}
    for v in ('seed', 'trl', 'bare'):
        wall, rss, out = run_process([sys.executable, __file__, '--worker', v, '--work', str(work)], env=env)
        r = json.loads(out.strip().splitlines()[-1])
        res[v] = {**r, 'train_seconds': r['seconds'], 'seconds': wall, 'rss_mb': rss, 'adapter': work/v}
    (work/'run.yaml').write_text(f"model: {work/'base'}\ndata: {work/'train.json'}\ntemplate: alpaca\nquant: null\nmethod: lora\n"
                                 f"lora: {{r: 16, targets: [{', '.join(TARGETS)}]}}\noutput_dir: {work/'ft_nb'}\nnum_train_epochs: 1\n"
                                 f"progress: none\nseed: 0\n")
    exe = Path(sys.executable).parent/'ft_nb'
    (work/'run2.yaml').write_text((work/'run.yaml').read_text().replace(str(work/'ft_nb'), str(work/'ft_nb2')))
    for k, cfg, out in (('ft_nb', 'run.yaml', 'ft_nb'), ('ft_nb again', 'run2.yaml', 'ft_nb2')):   # again: the tokenized data comes from the cache, as in any later run on the same file
        wall, rss, _ = run_process([str(exe), 'train', str(work/cfg)], env=env)
        m = json.loads((work/out/'metrics.json').read_text())
        res[k] = dict(seconds=wall, train_seconds=m.get('train_seconds'), real_tokens=real, pad_fraction=pad, rss_mb=rss, adapter=work/out)
        if GPU: res[k]['gpu_gb'] = m['gpu_peak_gb']
    rate = json.loads(run_process([sys.executable, __file__, '--worker', 'matmul', '--work', str(work)], env=env)[2].strip().splitlines()[-1])['rate']
    lengths = json.loads((work/'lengths.json').read_text())['lengths']
    fl = train_flops(json.loads((work/'base'/'config.json').read_text()), lengths)
    for r in res.values(): r['held_out_loss'] = held_out_loss(work, r['adapter'])
    report(res, fl, rate, n_params, len(lengths))
    __import__('shutil').rmtree(work, ignore_errors=True)

def prepare_tokens(work):
    "ft_nb's tokenization of the training records (for the bare loop and the FLOP count), and the real tokens and pad fraction of ft_nb's batches."
    from ft_nb.data import prepare_dataset
    from transformers import AutoTokenizer
    ds, _ = prepare_dataset(str(work/'train.json'), AutoTokenizer.from_pretrained(work/'base'), template='alpaca', cache_dir=str(work/'cache'))   # not ft_nb's cache: its first run prepares the data itself
    ds.save_to_disk(str(work/'tokenized'))
    lengths = [len(r) for r in ds['input_ids']]
    (work/'lengths.json').write_text(json.dumps(dict(lengths=lengths, batch_tokens=OPT['per_device_train_batch_size'] * sum(lengths) / len(lengths))))
    return ft_nb_stats(work)

def report(res, fl, rate, n_params, n_records):
    "Print the markdown table, MFU and the ratios."
    where = f'GPU {__import__("torch").cuda.get_device_name(0)}' if GPU else f'{os.cpu_count()} CPU cores'
    print(f"{n_params / 1e6:.1f}M-parameter Llama, {n_records} records, one epoch, {where}; {fl['flops'] / 1e12:.2f} TFLOP to do "
          f"(attention {fl['attention_share']:.1%}); dense matmul rate measured {rate / 1e9:.1f} GFLOP/s\n")
    print('| run | seconds (process) | seconds (training loop) | real tokens/s (process) | pad fraction | peak RSS MB | held-out loss | '
          'MFU, training loop | MFU, process | speed vs seed | vs plain TRL | vs bare loop (its training loop) |' + (' GPU max allocated |' if GPU else ''))
    print('|---|---|---|---|---|---|---|---|---|---|---|---|' + ('---|' if GPU else ''))
    mfu = lambda secs: f"{fl['flops'] / (secs * rate):.0%}" if secs else 'n/a'
    for k, r in res.items():
        ts = r.get('train_seconds')
        print(f"| {k} | {r['seconds']:.0f} | {f'{ts:.0f}' if ts else 'n/a'} | {r['real_tokens'] / r['seconds']:.0f} | {r['pad_fraction']:.1%} | {r['rss_mb']:.0f} | "
              f"{r['held_out_loss']:.3f} | {mfu(ts)} | {mfu(r['seconds'])} | {res['seed']['seconds'] / r['seconds']:.2f}x | "
              f"{res['trl']['seconds'] / r['seconds']:.2f}x | {res['bare']['train_seconds'] / r['seconds']:.2f}x |" + (f" {r['gpu_gb']:.2f} GB |" if GPU else ''))
    print(f"\nFLOPs counted: {fl['flops']:.3g} (LoRA on a frozen base: 4N + 6n per token, N = {fl['linear_params'] / 1e6:.1f}M linear parameters "
          f"with the LM head, n = {fl['lora_params'] / 1e6:.2f}M adapter parameters, plus attention); TRL's `compute_flops_per_token` (the full fine-tuning convention, 6N) would count "
          f"{fl['usual_6n']:.3g}, {fl['usual_6n'] / fl['flops']:.2f}x as many.")

if __name__ == '__main__': main()
