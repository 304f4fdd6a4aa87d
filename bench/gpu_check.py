"""GPU check: ft_nb on one CUDA GPU, the paths the CPU tests cannot reach, in one command (sized for about 6 minutes on an H200).

A Qwen2.5-0.5B-shaped model (the sizes of Qwen/Qwen2.5-0.5B-Instruct's config.json) with random weights and the real Qwen2.5
tokenizer, built on the spot: no hub. Each check is timed and fails on its own (its error is recorded and the next one runs); the
JSON report is rewritten after each, so a run stopped by a time limit keeps what was done.

- env:        versions, the GPU, bf16 support
- train_bf16: 4-bit QLoRA load (NF4, bf16 compute) and 50 steps of `finetune` in bf16 on the demo's short tasks, eval before and after,
              generation: the learnt stop (eos_rate) and the stop itself (with each prompt's first greedy token made a stop token,
              `generate_samples` must end every answer there)
- train_fp16: the T4 path on this GPU: `torch.cuda.is_bf16_supported` reads False during the check, so `compute_dtype('auto')` and
              `finetune`'s precision choose as they do on a T4; asserted: fp16 4-bit compute, fp32 adapter (master) weights, a loss
              scaler, no bf16 parameter, buffer, quantization state or activation anywhere, finite losses
- merge:      the bf16 run's adapter merged on CUDA by `merge_adapter(check_4bit=True)`: max |Δlogit| against a real 4-bit load plus the
              adapter; and `requantize_model`'s rebuilt 4-bit weights against a real 4-bit load's, bit for bit
- memory:     peak `torch.cuda.max_memory_allocated` over a few optimizer steps against `estimate_memory` (goal ±15%), for qlora, lora
              and full at two sequence lengths, with and without gradient checkpointing; and `needs_gradient_checkpointing`'s
              decision for a 16 GB (T4) and a 24 GB (L4) card against whether the measured peak without checkpointing fits there
              (on a 139 GB H200 everything fits, so "what fits" is judged from the measured peaks against those cards' sizes)
- throughput: trained (non-pad) tokens/s of `ft_nb train` (TRL's fused loss on, and off) against plain TRL defaults (bench/throughput.py's
              TRL worker), one epoch of the same Alpaca records each, each in its own process
- notebook:   nbs/tutorials/qlora_colab.ipynb run top to bottom with its GPU branch (its slow and cuda cells), the local model and
              Alpaca file in place of the hub names (FT_NB_MODEL, FT_NB_DATA_FILE); the executed notebook is written to --out

--cpu-smoke runs every check's code on the CPU with tiny sizes (a 2-layer Qwen2, a step or two), and says in the report what only a
GPU can run there. The data (the Qwen2.5 tokenizer and alpaca_en_demo.json) come from FT_NB_DATA, else .gpu/ in the repository
(bench/gpu_prepare.sh copies them there for the GPU machine), else ../shared/data.

Run: python bench/gpu_check.py [--cpu-smoke] [--out DIR] [--only train_bf16,merge] [--model DIR] [--deadline SECONDS]
Writes DIR/gpu_check.json, DIR/gpu_check.md (the table also printed) and DIR/qlora_colab.ipynb (the executed tutorial)."""
import argparse, contextlib, gc, json, math, os, random, shutil, signal, subprocess, sys, tempfile, time, traceback, warnings
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault('HF_HUB_OFFLINE', '1')   # nothing is fetched: a hub lookup would wait for a network that is not there
sys.path[:0] = [str(ROOT), str(ROOT/'bench')]   # this checkout's ft_nb, and bench/throughput.py
QWEN_0_5B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True)   # Qwen/Qwen2.5-0.5B-Instruct
QWEN_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                 max_position_embeddings=2048, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True)   # dims multiples of 64: bnb's CPU kernels
QWEN_IDS = dict(vocab_size=151936, bos_token_id=151643, eos_token_id=151645)
SIZES = {'gpu': dict(shape=QWEN_0_5B, steps=50, batch=8, n_eval=40, lr=1e-3, max_new_tokens=32, mem_seqs=(512, 2048), mem_batch=4, mem_steps=3,
                     tp_records=320, nb_flags=('slow', 'cuda'), budgets=dict(env=30, train_bf16=90, train_fp16=90, merge=90, memory=150, throughput=200, notebook=240)),
         'cpu': dict(shape=QWEN_TINY, steps=2, batch=2, n_eval=4, lr=1e-3, max_new_tokens=4, mem_seqs=(32, 64), mem_batch=2, mem_steps=1,
                     tp_records=4, nb_flags=(), budgets=dict(env=30, train_bf16=120, train_fp16=120, merge=120, memory=300, throughput=600, notebook=120))}
CARDS = {'T4': 16, 'L4': 24}
CHECKS = ('env', 'train_bf16', 'train_fp16', 'merge', 'memory', 'notebook', 'throughput')
NOTEBOOK = ROOT/'nbs'/'tutorials'/'qlora_colab.ipynb'

# ---------------------------------------------------------------------------------------------------------------- helpers
def cuda()->bool:
    import torch
    return torch.cuda.is_available()

def expect(R, ok, what):
    "Record a failed expectation in the check's result (the check goes on, so every figure is kept)."
    if not ok: R.setdefault('failures', []).append(what)
    return ok

def cpu_only(R, what):
    "Say in the report what this run could not do because it has no GPU."
    R.setdefault('not_on_cpu', []).append(what)

def free():
    import torch
    gc.collect()
    if torch.cuda.is_available(): torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()

def gb(nbytes): return None if nbytes is None else round(nbytes / 1e9, 3)

def data_root()->Path:
    if os.environ.get('FT_NB_DATA'): return Path(os.environ['FT_NB_DATA'])
    if (ROOT/'.gpu'/'tokenizers'/'qwen2.5').is_dir(): return ROOT/'.gpu'
    return ROOT.parent/'shared'/'data'

def child(cmd, timeout, env=None, cwd=None)->dict:
    "Run a worker process; the JSON its last stdout line holds (an error with its stderr's tail if it fails)."
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, 'HF_HUB_OFFLINE': '1', **(env or {})}, cwd=cwd)
    if r.returncode: raise RuntimeError(f'{" ".join(map(str, cmd[1:4]))} failed ({r.returncode}):\n{r.stderr[-3000:]}')
    return json.loads(r.stdout.strip().splitlines()[-1])

def left(S)->int:
    "Seconds the running check (or its child process) may still take."
    return int(max(1, S.check_end - time.time()))

def demo_records(n, seed):
    from ft_nb.demo import demo_example
    rng = random.Random(seed)
    return [demo_example(rng) for _ in range(n)]

# ---------------------------------------------------------------------------------------------------------------- the model
def build_base(S)->Path:
    "Save a Qwen2.5-0.5B-shaped Qwen2 with random weights (bf16, as the hub's) and the Qwen2.5 tokenizer; its folder."
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config
    out = S.work/'base'
    tok = AutoTokenizer.from_pretrained(S.data/'tokenizers'/'qwen2.5')
    torch.manual_seed(0)
    with torch.device('cuda' if cuda() else 'cpu'):
        model = AutoModelForCausalLM.from_config(Qwen2Config(**QWEN_IDS, **S.shape), dtype=torch.bfloat16)
    S.n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out); tok.save_pretrained(out)
    del model; free()
    return out

# ---------------------------------------------------------------------------------------------------------------- env
def check_env(S, R):
    import importlib.metadata as md, torch
    R['versions'] = {p: _version(md, p) for p in ('torch', 'transformers', 'peft', 'trl', 'datasets', 'accelerate', 'bitsandbytes', 'execnb', 'pyarrow')}
    R['python'] = sys.version.split()[0]
    R['cuda'] = cuda()
    if cuda():
        p = torch.cuda.get_device_properties(0)
        R.update(gpu=p.name, gpu_memory_gb=gb(p.total_memory), bf16_supported=torch.cuda.is_bf16_supported(), capability=list(torch.cuda.get_device_capability()))
    else: cpu_only(R, 'no GPU: the figures below are the CPU smoke run of each check, with tiny sizes')
    R['model'] = dict(folder=str(S.base), parameters=S.n_params, built=S.built, shape=S.shape)
    R['summary'] = f"{R.get('gpu', 'CPU')}, torch {R['versions']['torch']}, {S.n_params / 1e6:.0f}M-parameter model"

def _version(md, p):
    try: return md.version(p)
    except md.PackageNotFoundError: return None

# ---------------------------------------------------------------------------------------------------------------- training
class Probe:
    "A TrainerCallback that records dtypes (parameters, buffers, 4-bit compute and state, activations of the first step), losses and the loss scaler."
    def __new__(cls, *a, **kw):
        from transformers import TrainerCallback
        class _Probe(TrainerCallback):
            def __init__(self):
                self.losses, self.activations, self.first_bf16, self.hooks, self.scaler = [], set(), None, [], None
            def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
                self.census = dtype_census(model)
                for n, m in model.named_modules(): self.hooks.append(m.register_forward_hook(self._hook(n)))
                self.scaler = _scaler(optimizer)
            def _hook(self, name):
                def hook(mod, inp, out):
                    for t in _tensors(out):
                        self.activations.add(str(t.dtype).split('.')[-1])
                        if str(t.dtype) == 'torch.bfloat16' and self.first_bf16 is None: self.first_bf16 = name or '(model)'
                return hook
            def on_step_end(self, args, state, control, optimizer=None, **kw):
                for h in self.hooks: h.remove()
                self.hooks = []
                if optimizer is not None and self.scaler is None: self.scaler = _scaler(optimizer)
            def on_log(self, args, state, control, logs=None, **kw):
                if logs and 'loss' in logs: self.losses.append(logs['loss'])
        return _Probe(*a, **kw)

def _tensors(o):
    import torch
    if torch.is_tensor(o):
        if o.is_floating_point(): yield o
    elif isinstance(o, (list, tuple)):
        for v in o: yield from _tensors(v)
    elif isinstance(o, dict):
        for v in o.values(): yield from _tensors(v)

def _scaler(optimizer)->dict|None:
    "The loss scaler accelerate wrapped the optimizer with (fp16), as {type, enabled, scale}."
    sc = getattr(optimizer, 'scaler', None)
    if sc is None: return None
    on = sc.is_enabled() if hasattr(sc, 'is_enabled') else True
    return dict(type=type(sc).__name__, enabled=on, scale=float(sc.get_scale()) if on else None)

def dtype_census(model)->dict:
    "dtypes of the trainable and frozen parameters, the buffers, and the 4-bit layers' compute dtype and quantization state."
    import sys as _s
    tr, fr, buf, comp, qs = set(), set(), set(), set(), set()
    for p in model.parameters():
        (tr if p.requires_grad else fr).add(str(p.dtype).split('.')[-1])
        st = getattr(p, 'quant_state', None)
        if st is not None: qs.add(str(st.dtype).split('.')[-1])
    for b in model.buffers():
        if b.is_floating_point(): buf.add(str(b.dtype).split('.')[-1])
    bnb = _s.modules.get('bitsandbytes')
    for m in model.modules() if bnb else ():
        if isinstance(m, bnb.nn.Linear4bit) and m.compute_dtype is not None: comp.add(str(m.compute_dtype).split('.')[-1])
    return dict(trainable=sorted(tr), frozen=sorted(fr), buffers=sorted(buf), compute_4bit=sorted(comp), quant_state=sorted(qs))

def stop_check(model, tok, prompts)->dict:
    "Make each prompt's first greedy token a stop token: `generate_samples` must then end every answer at once (ended, empty)."
    import torch
    from ft_nb.generation import generate_samples
    gcfg = model.generation_config
    stops = gcfg.eos_token_id if isinstance(gcfg.eos_token_id, list) else [gcfg.eos_token_id]
    firsts = []
    model.eval()
    with torch.no_grad():
        for p in prompts:
            enc = tok.apply_chat_template([{'role': 'user', 'content': p}], add_generation_prompt=True, return_tensors='pt', return_dict=True).to(model.device)
            firsts.append(int(model(**enc).logits[0, -1].argmax()))
    gcfg.eos_token_id = sorted(set(stops) | set(firsts))
    try: out = generate_samples(model, tok, prompts, max_new_tokens=8, batch_size=1)
    finally: gcfg.eos_token_id = stops
    return dict(stop_ids=stops, im_end_is_stop=tok.convert_tokens_to_ids('<|im_end|>') in stops,
                stopped_at_once=all(o['ended'] and o['completion'] == '' for o in out))

def demo_data(S, tok):
    "The demo's short tasks, tokenized once with the model's chat template for both training checks: (records, train, eval)."
    if getattr(S, 'demo', None) is None:   # prepare_dataset hashes the tokenizer for its cache key: ~10 s a hash for Qwen's 151k vocabulary
        from ft_nb.data import prepare_dataset
        recs = demo_records(S.steps * S.batch + S.n_eval, 0)
        ds, _ = prepare_dataset(recs, tok)
        S.demo = recs, ds.select(range(S.n_eval, len(ds))), ds.select(range(S.n_eval))
    return S.demo

def train_run(S, R, out, dtype, precision:dict, probe=True):
    "Load the base in 4-bit and `finetune` QLoRA on the demo's tasks; the results go into R."
    import torch
    from ft_nb.models import load_model
    from ft_nb.train import finetune
    model, tok = load_model(str(S.base), quant='4bit', dtype=dtype)
    recs, train, evals = demo_data(S, tok)
    expect(R, model.is_loaded_in_4bit, 'the model did not load in 4-bit')
    pr = Probe()
    t = time.time()
    res = finetune(model, tok, train, evals, output_dir=str(out), method='qlora', max_steps=S.steps,
                   per_device_train_batch_size=S.batch, gradient_accumulation_steps=1, learning_rate=S.lr, save_strategy='no',
                   logging_steps=max(1, S.steps // 10), progress='none', sample_prompts=[r['instruction'] for r in recs[:8]],
                   max_new_tokens=S.max_new_tokens, callbacks=[pr], **precision)
    R.update(seconds_finetune=round(time.time() - t, 1), steps=res.steps, train_loss=res.train_loss, eval_loss_before=res.eval_loss_before,
             eval_loss_after=res.eval_loss_after, eos_rate=res.eos_rate, samples=[s['completion'] for s in res.samples[:3]],
             gpu_peak_gib=res.gpu_peak_gb, stopped=res.stopped, losses=pr.losses, dtypes=pr.census, activations=sorted(pr.activations),
             first_bf16_module=pr.first_bf16, scaler=pr.scaler)
    expect(R, res.steps == S.steps and not res.stopped, f'trained {res.steps} of {S.steps} steps ({res.stopped})')
    expect(R, all(math.isfinite(l) for l in pr.losses + [res.train_loss, res.eval_loss_after or 0]), f'a loss is not finite: {pr.losses}')
    expect(R, res.eval_loss_after is not None and res.eval_loss_after < res.eval_loss_before, 'the eval loss did not fall')
    expect(R, pr.census['trainable'] == ['float32'], f"adapter weights are {pr.census['trainable']}, not float32")
    expect(R, (Path(out)/'adapter_model.safetensors').exists(), 'no adapter was saved')
    R['stop'] = stop_check(model, tok, [r['instruction'] for r in recs[:4]])
    expect(R, R['stop']['im_end_is_stop'], "<|im_end|> is not among the stop tokens")
    expect(R, R['stop']['stopped_at_once'], 'generate_samples did not stop at a stop token')
    if res.eos_rate is not None and res.eos_rate < 0.9:
        R.setdefault('notes', []).append(f'eos_rate {res.eos_rate:.2f}: the random-weight model did not learn to end its answers in {S.steps} steps '
                                         '(a learning fact, not a GPU one; the stop itself is checked by stop.stopped_at_once)')
    del model, res; free()
    return pr

def check_train_bf16(S, R):
    import torch
    if cuda(): expect(R, torch.cuda.is_bf16_supported(), 'this GPU has no bf16')
    else: R.setdefault('notes', []).append('bf16 autocast on the CPU (slow, but the same code path)')
    pr = train_run(S, R, S.work/'train_bf16', 'bf16', dict(bf16=True, fp16=False))
    expect(R, pr.census['compute_4bit'] == ['bfloat16'], f"4-bit compute dtype {pr.census['compute_4bit']}")
    expect(R, 'bfloat16' in pr.activations, f'no bf16 activation: {sorted(pr.activations)}')
    R['summary'] = _train_summary(R)

@contextlib.contextmanager
def as_on_t4():
    "`torch.cuda.is_bf16_supported` reads False (a T4's answer) while the block runs."
    import torch
    orig = torch.cuda.is_bf16_supported
    torch.cuda.is_bf16_supported = lambda *a, **k: False
    try: yield
    finally: torch.cuda.is_bf16_supported = orig

def check_train_fp16(S, R):
    import torch
    from ft_nb.models import compute_dtype
    from ft_nb.train import _precision
    if cuda():
        with as_on_t4():
            R['t4_choice'] = dict(precision=_precision(), compute_dtype=str(compute_dtype('auto')))
            expect(R, R['t4_choice']['precision'] == dict(bf16=False, fp16=True), f"on a T4 _precision() gives {R['t4_choice']['precision']}")
            expect(R, compute_dtype('auto') == torch.float16, f"on a T4 compute_dtype('auto') is {compute_dtype('auto')}")
            pr = train_run(S, R, S.work/'train_fp16', 'auto', {})   # what a T4 user runs: no precision given
        expect(R, pr.scaler is not None and pr.scaler['enabled'], f'no loss scaler in the fp16 run ({pr.scaler})')
    else:
        cpu_only(R, "the T4's automatic choice (needs CUDA): fp16 is forced here with dtype='fp16', fp16=True, bf16=False")
        pr = train_run(S, R, S.work/'train_fp16', 'fp16', dict(fp16=True, bf16=False))
        if not (pr.scaler and pr.scaler['enabled']): cpu_only(R, f'loss scaling (a CUDA GradScaler): on the CPU the scaler is {pr.scaler}')
    c = pr.census
    expect(R, c['compute_4bit'] == ['float16'], f"4-bit compute dtype {c['compute_4bit']}")
    bf16 = [k for k, v in c.items() if 'bfloat16' in v] + (['activations'] if 'bfloat16' in pr.activations else [])
    expect(R, not bf16, f'bf16 in the fp16 run: {bf16} (first bf16 activation from {pr.first_bf16})')
    R['summary'] = _train_summary(R) + f", scaler {'on' if pr.scaler and pr.scaler['enabled'] else 'off'}, bf16 nowhere: {not bf16}"

def _train_summary(R):
    f = lambda v: 'n/a' if v is None else f'{v:.3f}'
    return (f"{R['steps']} steps in {R['seconds_finetune']} s, eval loss {f(R['eval_loss_before'])} -> {f(R['eval_loss_after'])}, "
            f"eos_rate {f(R['eos_rate'])}, stop works: {R['stop']['stopped_at_once']}, peak {f(R['gpu_peak_gib'])} GiB")

# ---------------------------------------------------------------------------------------------------------------- merge
def check_merge(S, R):
    import torch
    from ft_nb.merge import merge_adapter
    adapter = S.work/'train_bf16'
    if not (adapter/'adapter_model.safetensors').exists(): raise RuntimeError("needs train_bf16's adapter, which is not there (did train_bf16 fail?)")
    t = time.time()
    rep = merge_adapter(adapter, S.work/'merged', dtype='bf16', check_4bit=True)
    R.update(seconds_merge=round(time.time() - t, 1), passed=rep.passed, mode=rep.mode, max_dlogit=rep.max_dlogit, kl=rep.kl,
             adapter_effect=rep.adapter_effect, vs_trained_max=rep.vs_trained_max, vs_trained_kl=rep.vs_trained_kl, tolerance=rep.tolerance,
             notes=rep.notes)
    expect(R, rep.mode == 'nf4', f'merged in mode {rep.mode}, not nf4')
    expect(R, rep.passed, f'the merge failed its own verification: {rep}')
    shutil.rmtree(S.work/'merged', ignore_errors=True)
    R['rebuilt_4bit'] = rebuilt_vs_loaded(S)
    expect(R, R['rebuilt_4bit']['equal_layers'] == R['rebuilt_4bit']['layers'], f"rebuilt 4-bit weights differ: {R['rebuilt_4bit']}")
    R['summary'] = (f"merge {R['seconds_merge']} s, vs a real 4-bit load + adapter max|Δlogit| {rep.vs_trained_max:.4f} (adapter moves logits by "
                    f"{rep.adapter_effect:.3f}), rebuilt 4-bit weights equal in {R['rebuilt_4bit']['equal_layers']}/{R['rebuilt_4bit']['layers']} layers")

def rebuilt_vs_loaded(S)->dict:
    "`requantize_model` on a 16-bit load against a real 4-bit load (dequantized before any forward pass), layer by layer."
    import torch, bitsandbytes as bnb
    from ft_nb.merge import quantized_layers, requantize_model
    from ft_nb.models import load_model
    m16, _ = load_model(str(S.base), quant=None, dtype='bf16')
    names = quantized_layers(m16)
    requantize_model(m16, 'nf4', True, 'uint8', src_dtype=torch.bfloat16, dtype=torch.bfloat16)
    m4, _ = load_model(str(S.base), quant='4bit', dtype='bf16')
    equal, worst = 0, 0.0
    for n in names:
        w = m16.get_submodule(n).weight.data
        q = m4.get_submodule(n).weight
        d = bnb.functional.dequantize_4bit(q.data, q.quant_state).to(w.dtype).to(w.device)
        equal += bool(torch.equal(w, d))
        worst = max(worst, float((w.float() - d.float()).abs().max()))
    out = dict(layers=len(names), equal_layers=equal, max_abs_diff=worst, device=str(next(m4.parameters()).device))
    del m16, m4; free()
    return out

# ---------------------------------------------------------------------------------------------------------------- memory
def token_rows(n, seq, vocab=151643, seed=0):
    "n rows of `seq` random token ids, all trained on: every step sees exactly batch x seq tokens."
    import datasets, torch
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, seq), generator=g).tolist()
    return datasets.Dataset.from_dict({'input_ids': ids, 'attention_mask': [[1] * seq] * n, 'labels': ids})

def mem_run(S, method, seq, ckpt)->dict:
    "Peak allocated GPU memory over a few optimizer steps of `method` at `seq` tokens (None on the CPU), and the weights' share after loading."
    import torch
    from ft_nb.methods import apply_method
    from ft_nb.models import load_model
    from ft_nb.train import build_trainer
    free()
    model, tok = load_model(str(S.base), quant='4bit' if method == 'qlora' else None, dtype='bf16')
    auto = {c: _auto(model, method, seq, S.mem_batch, g) for c, g in CARDS.items()}
    model = apply_method(model, method, gradient_checkpointing=ckpt)
    loaded = torch.cuda.memory_allocated() if cuda() else None
    with tempfile.TemporaryDirectory() as tmp:
        tr = build_trainer(model, tok, token_rows(S.mem_batch * S.mem_steps, seq), output_dir=tmp, progress='none', max_steps=S.mem_steps,
                           per_device_train_batch_size=S.mem_batch, gradient_accumulation_steps=1, save_strategy='no', logging_steps=1000,
                           bf16=True, fp16=False)
        fused = type(tr).__name__ == 'FtNbSFTTrainer'
        tr.train()
    peak = torch.cuda.max_memory_allocated() if cuda() else None
    del tr, model; free()
    return dict(peak=peak, loaded=loaded, auto=auto, fused_loss=fused)

def _auto(model, method, seq, batch, card_gb)->bool:
    from ft_nb.memory import needs_gradient_checkpointing
    return needs_gradient_checkpointing(model, method, seq, batch, memory_gb=card_gb)

def check_memory(S, R):
    from transformers import AutoConfig
    from ft_nb.memory import GPU_RESERVED_GB, estimate_memory, param_census
    cen = param_census(AutoConfig.from_pretrained(S.base))
    rows, decisions = [], []
    if not cuda(): cpu_only(R, 'torch.cuda.max_memory_allocated: the estimates and the auto decisions are computed, nothing is measured')
    for method in ('qlora', 'lora', 'full'):
        for seq in S.mem_seqs:
            peaks = {}
            for ckpt in (False, True):
                est = estimate_memory(None, method, seq, S.mem_batch, grad_ckpt=ckpt, dtype='bf16', census=cen)
                m = mem_run(S, method, seq, ckpt)
                meas = gb(m['peak'])
                ratio = None if meas is None else round(meas / est['total'], 3)
                rows.append(dict(method=method, seq_len=seq, batch=S.mem_batch, grad_ckpt=ckpt, estimate_gb=round(est['total'], 3),
                                 estimate_weights_gb=round(est['weights'], 3), measured_gb=meas, loaded_gb=gb(m['loaded']), ratio=ratio,
                                 within_15pct=None if ratio is None else abs(ratio - 1) <= 0.15, fused_loss=m['fused_loss']))
                peaks[ckpt] = meas
                R['runs'] = rows; S.save()
            for card, size in CARDS.items():
                needed = None if peaks[False] is None else peaks[False] > size - GPU_RESERVED_GB
                on = m['auto'][card]
                verdict = None if needed is None else 'right' if on == needed else 'conservative' if on else 'wrong'
                decisions.append(dict(method=method, seq_len=seq, card=card, card_gb=size, auto_ckpt=on, measured_without_gb=peaks[False],
                                      measured_with_gb=peaks[True], needed=needed, verdict=verdict,
                                      fits_with_ckpt=None if peaks[True] is None else peaks[True] <= size - GPU_RESERVED_GB))
            R['auto_decisions'] = decisions; S.save()
    if cuda():
        off = [r for r in rows if not r['within_15pct']]
        expect(R, not off, f'{len(off)} of {len(rows)} estimates off by more than 15%: ' +
               ', '.join(f"{r['method']}/{r['seq_len']}/{'ckpt' if r['grad_ckpt'] else 'no ckpt'} x{r['ratio']}" for r in off))
        wrong = [d for d in decisions if d['verdict'] == 'wrong']
        expect(R, not wrong, f'auto gradient checkpointing left off where it was needed: {wrong}')
    ratios = [r['ratio'] for r in rows if r['ratio'] is not None]
    verdicts = ', '.join(f"{v} {sum(d['verdict'] == v for d in decisions)}" for v in ('right', 'conservative', 'wrong'))
    R['summary'] = (f"{len(rows)} runs, measured/estimate {min(ratios):.2f}..{max(ratios):.2f}, {sum(r['within_15pct'] for r in rows)} within 15%; "
                    f"auto ckpt verdicts: {verdicts}"
                    if ratios else f"{len(rows)} runs (estimates only), auto ckpt on for {sum(d['auto_ckpt'] for d in decisions)} of {len(decisions)} (method, length, card)")

# ---------------------------------------------------------------------------------------------------------------- throughput
def check_throughput(S, R):
    import throughput as tp
    work = S.work/'tp'; work.mkdir(exist_ok=True)
    if not (work/'base').exists(): (work/'base').symlink_to(S.base)
    recs = json.loads((S.data/'datasets'/'alpaca_en_demo.json').read_text())
    (work/'train.json').write_text(json.dumps(recs[:-100][:S.tp_records]))
    env = {'FT_NB_DATA': str(S.data), **({'FT_NB_BENCH_GPU': '1'} if cuda() else {})}
    res = {}
    t = time.time(); r = child([sys.executable, tp.__file__, '--worker', 'trl', '--work', str(work)], left(S), env)
    res['trl defaults'] = dict(train_seconds=r['seconds'], wall_seconds=time.time() - t, real_tokens=r['real_tokens'], pad_fraction=r['pad_fraction'], gpu_gib=r.get('gpu_gb'))
    R['runs'] = res; S.save()
    for fused in (True, False):
        t = time.time(); r = child([sys.executable, str(Path(__file__).resolve()), '--worker', 'ft_nb_train', str(work), str(fused)], left(S), env)
        res[f"ft_nb train, fused loss {'on' if fused else 'off'}"] = dict(train_seconds=r['train_seconds'], wall_seconds=time.time() - t, real_tokens=r['real_tokens'],
                                                                       pad_fraction=r['pad_fraction'], gpu_gib=r['gpu_gib'], train_loss=r['train_loss'])
        R['runs'] = res; S.save()
    for v in res.values():
        v['tokens_per_s'] = round(v['real_tokens'] / v['train_seconds'], 1)
        v['tokens_per_s_wall'] = round(v['real_tokens'] / v['wall_seconds'], 1)
    R.update(records=len(recs[:-100][:S.tp_records]), n_params=S.n_params,
             note='train_seconds: the training loop alone (trainer.train; for ft_nb from on_train_begin to on_train_end); wall: the whole process')
    base = res['trl defaults']['tokens_per_s']
    R['summary'] = ', '.join(f"{k} {v['tokens_per_s']:.0f} tok/s ({v['tokens_per_s'] / base:.2f}x)" for k, v in res.items())

def worker_ft_nb_train(work, fused):
    "`ft_nb train` as the CLI runs it (its YAML, `run_training`), with a callback timing the training loop."
    import yaml
    from transformers import TrainerCallback
    from ft_nb.cli import load_run_config, run_training
    import throughput as tp
    work, fused = Path(work), fused == 'True'
    out = work/f"ft_nb_{'fused' if fused else 'plain'}"
    cfg_file = work/f'{out.name}.yaml'
    cfg_file.write_text(yaml.safe_dump(dict(model=str(work/'base'), data=str(work/'train.json'), template='alpaca', quant=None, method='lora',
                                            lora=dict(r=16, targets=tp.TARGETS), output_dir=str(out), num_train_epochs=1, progress='none', seed=0,
                                            save_strategy='no', fused_loss=fused)))
    class Timer(TrainerCallback):
        "The training loop's seconds; then the real (non-pad) tokens and pad share of the epoch's batches, as bench/throughput.py counts them."
        def on_train_begin(self, *a, **k): self.t = time.perf_counter()
        def on_train_end(self, *a, train_dataloader=None, **k):
            self.secs = time.perf_counter() - self.t
            masks = [b['attention_mask'] for b in train_dataloader]
            self.real, self.total = sum(int(m.sum()) for m in masks), sum(m.numel() for m in masks)
    timer = Timer()
    cfg = load_run_config(cfg_file, {})
    res = run_training({**cfg, 'callbacks': [timer]})
    print(json.dumps(dict(train_seconds=timer.secs, gpu_gib=res.gpu_peak_gb, train_loss=res.train_loss, real_tokens=timer.real,
                          pad_fraction=1 - timer.real / timer.total)))

# ---------------------------------------------------------------------------------------------------------------- notebook
def check_notebook(S, R):
    flags = list(S.nb_flags)
    if not cuda(): cpu_only(R, 'the slow and cuda cells (the GPU branch); the CPU stand-in of the slow cells is `nbdev_test --flags slow --path '
                            'nbs/tutorials/qlora_colab.ipynb` (many minutes on 2 cores). Here only the notebook runner and the fast cells run')
    dst = S.out/NOTEBOOK.name
    with tempfile.TemporaryDirectory() as cwd:
        env = {'FT_NB_MODEL': str(S.base), 'FT_NB_DATA_FILE': str(S.data/'datasets'/'alpaca_en_demo.json'), 'PYTHONPATH': os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')]))}
        r = child([sys.executable, str(Path(__file__).resolve()), '--worker', 'notebook', str(NOTEBOOK), str(dst), ','.join(flags)], left(S), env, cwd=cwd)
    R.update(r, flags=flags, executed_notebook=str(dst))
    expect(R, not r['errors'], f"{len(r['errors'])} cell(s) raised: " + '; '.join(f"cell {e['cell']}: {e['error']}" for e in r['errors']))
    R['summary'] = f"{r['ran']} cells run ({', '.join(flags) or 'no flags'}), {r['skipped']} skipped, {len(r['errors'])} errors, {r['seconds']:.0f} s"

def _directives(src:str)->dict:
    "A cell's `#| ` directives: {name: value} (value '' for a bare flag)."
    out = {}
    for line in src.splitlines():
        if not line.startswith('#|'): break
        k, _, v = line[2:].strip().partition(':')
        for w in ([k] if v else k.split()): out[w.strip()] = v.strip()
    return out

def _tst_flags()->set:
    import configparser
    c = configparser.ConfigParser(); c.read(ROOT/'settings.ini')
    return set(c['DEFAULT'].get('tst_flags', '').split())

def worker_notebook(src, dst, flags):
    "Run the notebook's cells as nbdev_test selects them for `flags` (execnb, as nbdev_test does), keep their outputs, write it to `dst`."
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    flags, tst = set(filter(None, flags.split(','))), _tst_flags()
    nb, sh = read_nb(src), CaptureShell()
    ran = skipped = 0; errors = []; t = time.time()
    for i, c in enumerate(nb.cells):
        if c.cell_type != 'code': continue
        d = _directives(c.source)
        if d.get('eval') == 'false' or 'notest' in d or any(k in tst and k not in flags for k in d): skipped += 1; continue
        sh.cell(c); ran += 1
        if sh.exc: errors.append(dict(cell=i, error=f'{type(sh.exc).__name__}: {str(sh.exc).strip()[:300]}'))
        print(f'cell {i}: {"error" if sh.exc else "ok"} ({time.time() - t:.0f} s)', file=sys.stderr)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    write_nb(nb, dst)
    print(json.dumps(dict(ran=ran, skipped=skipped, errors=errors, seconds=time.time() - t)))

# ---------------------------------------------------------------------------------------------------------------- report
def table(rep:dict)->str:
    m, cks = rep['meta'], rep['checks']
    lines = [f"# ft_nb GPU check: {m['where']}, {m['mode']}, {m['total_seconds']:.0f} s", '',
             '| check | status | seconds | figures |', '|---|---|---:|---|']
    for k, r in cks.items():
        lines.append(f"| {k} | {r['status']} | {r.get('seconds', 0):.0f} | {_cell(r.get('summary') or r.get('error') or r.get('why', ''))} |")
    for k, r in cks.items():
        for f in r.get('failures', []): lines.append(f'\n- **{k} failed:** {_cell(f)}')
        for f in r.get('not_on_cpu', []): lines.append(f'\n- {k}, not on the CPU: {f}')
        for f in r.get('notes', []) if isinstance(r.get('notes'), list) else []: lines.append(f'\n- {k}: {_cell(f)}')
    if runs := cks.get('memory', {}).get('runs'):
        lines += ['', '| method | seq | grad ckpt | estimate GB | measured GB | measured/estimate | weights loaded GB | fused loss |', '|---|---:|---|---:|---:|---:|---:|---|']
        lines += [f"| {r['method']} | {r['seq_len']} | {'on' if r['grad_ckpt'] else 'off'} | {r['estimate_gb']:.2f} | {_f(r['measured_gb'])} | {_f(r['ratio'])} | "
                  f"{_f(r['loaded_gb'])} | {r['fused_loss']} |" for r in runs]
    if ds := cks.get('memory', {}).get('auto_decisions'):
        lines += ['', '| method | seq | card | auto ckpt | measured without / with (GB) | needed | verdict |', '|---|---:|---|---|---|---|---|']
        lines += [f"| {d['method']} | {d['seq_len']} | {d['card']} ({d['card_gb']} GB) | {d['auto_ckpt']} | {_f(d['measured_without_gb'])} / {_f(d['measured_with_gb'])} | "
                  f"{_f(d['needed'])} | {_f(d['verdict'])} |" for d in ds]
    if runs := cks.get('throughput', {}).get('runs'):
        lines += ['', '| run | train s | wall s | real tokens | pad fraction | tokens/s (train) | tokens/s (wall) | GPU peak GiB |', '|---|---:|---:|---:|---:|---:|---:|---:|']
        lines += [f"| {k} | {v['train_seconds']:.1f} | {v['wall_seconds']:.1f} | {v['real_tokens']} | {v['pad_fraction']:.1%} | {_f(v.get('tokens_per_s'))} | "
                  f"{_f(v.get('tokens_per_s_wall'))} | {_f(v.get('gpu_gib'))} |" for k, v in runs.items()]
    return '\n'.join(lines)

def _f(v): return '–' if v is None else f'{v:.3g}' if isinstance(v, float) else str(v)
def _cell(s): return str(s).replace('|', '\\|').replace('\n', ' ')[:400]

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--cpu-smoke', action='store_true', help='every check on the CPU with tiny sizes (a few minutes)')
    ap.add_argument('--out', default='gpu_check_out', help='folder for gpu_check.json, gpu_check.md and the executed notebook')
    ap.add_argument('--only', default=None, help=f'comma-separated checks to run, of {",".join(CHECKS)} (merge needs train_bf16)')
    ap.add_argument('--model', default=None, help='a model folder to use instead of the random Qwen2.5-0.5B-shaped one (e.g. the real Qwen2.5-0.5B-Instruct)')
    ap.add_argument('--deadline', type=float, default=None, help='seconds for the whole run; checks that would start after it are skipped (default 450 on a GPU)')
    ap.add_argument('--worker', nargs='+', help=argparse.SUPPRESS)
    a = ap.parse_args()
    warnings.filterwarnings('ignore')
    from ft_nb.testing import quiet
    quiet()
    if a.worker: return globals()[f'worker_{a.worker[0]}'](*a.worker[1:])
    if not a.cpu_smoke and not cuda(): sys.exit('no CUDA GPU here: run with --cpu-smoke for the CPU run of every check')
    S = SimpleNamespace(**SIZES['cpu' if a.cpu_smoke else 'gpu'], t0=time.time(), data=data_root(), out=Path(a.out).resolve(),
                        work=Path(tempfile.mkdtemp(prefix='ft_nb_gpu_check_')))
    S.deadline = a.deadline or (450 if not a.cpu_smoke else 1200)
    S.out.mkdir(parents=True, exist_ok=True)
    rep = dict(meta=dict(mode='cpu smoke' if a.cpu_smoke else 'gpu', where='CPU' if not cuda() else 'GPU', data=str(S.data), total_seconds=0), checks={})
    def save():
        rep['meta']['total_seconds'] = time.time() - S.t0
        tmp = S.out/'gpu_check.json.tmp'
        tmp.write_text(json.dumps(rep, indent=2, default=str)); os.replace(tmp, S.out/'gpu_check.json')
        (S.out/'gpu_check.md').write_text(table(rep) + '\n')
    S.save = save
    try:
        if a.model: S.base, S.built, S.n_params = Path(a.model).resolve(), False, None
        else: S.base, S.built = build_base(S), True
        if S.n_params is None:
            from transformers import AutoConfig
            from ft_nb.memory import param_census
            S.n_params = param_census(AutoConfig.from_pretrained(S.base)).total
        print(f'model ready in {time.time() - S.t0:.0f} s: {S.base}', file=sys.stderr)
        fns = dict(env=check_env, train_bf16=check_train_bf16, train_fp16=check_train_fp16, merge=check_merge, memory=check_memory,
                   throughput=check_throughput, notebook=check_notebook)
        for name in (a.only.split(',') if a.only else CHECKS):
            run_check(S, rep, name, fns[name])
    finally:
        save()
        shutil.rmtree(S.work, ignore_errors=True)
        print(table(rep))
    return 0 if all(r['status'] == 'pass' for r in rep['checks'].values()) else 1

class CheckTimeout(Exception): pass

def _alarm(sig, frame): raise CheckTimeout('the check ran past its time budget')

def run_check(S, rep, name, fn):
    budget = S.budgets[name]
    R = rep['checks'][name] = dict(status='running')
    S.save()
    t = time.time()
    remaining = S.deadline - (t - S.t0)
    if remaining < 20:
        R.update(status='skipped', why=f'out of time: {remaining:.0f} s of the {S.deadline:.0f} s deadline left'); S.save(); return
    print(f'--- {name} (budget {min(budget, remaining):.0f} s)', file=sys.stderr)
    S.check_end = t + min(budget, remaining)
    signal.signal(signal.SIGALRM, _alarm); signal.alarm(int(min(budget, remaining)))
    try:
        fn(S, R)
        R['status'] = 'fail' if R.get('failures') else 'pass'
    except (Exception, SystemExit) as e:
        R.update(status='error', error=f'{type(e).__name__}: {str(e).strip()[:2000]}', traceback=traceback.format_exc()[-4000:])
    finally:
        signal.alarm(0)
        R['seconds'] = round(time.time() - t, 1)
        with contextlib.suppress(Exception): free()
        S.save()
    print(f"--- {name}: {R['status']} in {R['seconds']:.0f} s", file=sys.stderr)

if __name__ == '__main__': sys.exit(main())
