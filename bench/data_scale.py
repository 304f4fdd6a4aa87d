"""Data preparation at scale: `prepare_dataset` on 10k, 100k (and 1M) rows, and `finetune`'s start on a big prepared set.

The rows replicate the real alpaca_en_demo.json (999 records) and sharegpt_dummy_conversation.json (500) from
../shared/data, each copy numbered and its replies cut or repeated (x0.5, x1, x1.5, x2, x3, by copy), written as JSONL
and as Parquet. SmolLM2's tokenizer with the default ChatML template.

For each set, size, file format and `num_proc` (1 and 2), one process runs `prepare_dataset` on a fresh cache and a
second process calls it again on that cache. Reported: rows/s of the first call, the peak RSS of its process
(`os.wait4`'s ru_maxrss: the process's own), the cache folder's size, and the second call's seconds (inside its
process, after the imports). The reference is `apply_chat_template(msgs, tokenize=True)` alone on the same rows (the messages
`ft_nb.data.to_messages` gives), in one process, timed two ways: one conversation per call, and 256 per call (a batch,
which the Rust tokenizer encodes on all cores, as `prepare_dataset` does): what any tokenization costs. The tokenizer's
threads are left as users get them (TOKENIZERS_PARALLELISM unset).

`--train`: seconds from the `finetune(...)` call to the end of the first optimizer step (tiny Llama, LoRA,
`max_steps=2`, batch 4, the default length-grouped sampler) on an N-row tokenized dataset written straight to Arrow
(random lengths 20-200), without and with the `length` column that `prepare_dataset` now writes; `--before DIR` runs the
same with the ft_nb package found in DIR (e.g. `git archive <commit> ft_nb | tar -x -C DIR`) on the dataset without
`length`, and each `prepare_dataset` row again with that package (marked "before").

Run: python bench/data_scale.py [--rows 10000 100000] [--sets alpaca sharegpt] [--formats jsonl parquet]
                                [--num-proc 1 2] [--train 100000] [--before DIR]
(prints markdown tables; writes only to a temporary folder)"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'bench'))
from throughput import run_process   # wall seconds, peak RSS and stdout of one child process
DATA = ROOT.parent/'shared'/'data'
SCALES = (0.5, 1, 1.5, 2, 3)

def scaled(text:str, f:float)->str:
    "`text` cut to a fraction `f` of it, or repeated to `f` times its length (deterministic)."
    n = max(1, round(len(text) * f))
    return (text + ' ') * int(f) + text[:n - int(f) * (len(text) + 1)] if f >= 1 else text[:n]

def alpaca_row(r:dict, i:int, k:int)->dict:
    return {'instruction': f'{i}. {r["instruction"]}', 'input': r.get('input') or '', 'output': scaled(r['output'], SCALES[k % len(SCALES)])}

def sharegpt_row(r:dict, i:int, k:int)->dict:
    f = SCALES[k % len(SCALES)]
    conv = [{'from': t['from'], 'value': scaled(t['value'], f) if t['from'] == 'gpt' else t['value']} for t in r['conversations']]
    conv[0] = {**conv[0], 'value': f'{i}. ' + conv[0]['value']}
    return {'id': f'{r["id"]}-{i}', 'conversations': conv}

SETS = {'alpaca': ('alpaca_en_demo.json', alpaca_row), 'sharegpt': ('sharegpt_dummy_conversation.json', sharegpt_row)}

def rows_of(name:str, n:int):
    "The first `n` rows of the replicated set `name`, one at a time."
    file, make = SETS[name]
    src = json.loads((DATA/'datasets'/file).read_text())
    for i in range(n): yield make(src[i % len(src)], i, i // len(src))

def write(name:str, n:int, fmt:str, folder:Path)->Path:
    "The replicated set written as JSONL or Parquet (in batches: the writer holds 10k rows at most)."
    import pyarrow as pa, pyarrow.parquet as pq
    p = folder/f'{name}-{n}.{fmt}'
    if p.exists(): return p
    if fmt == 'jsonl':
        with open(p, 'w') as f:
            for r in rows_of(name, n): f.write(json.dumps(r) + '\n')
        return p
    w, buf = None, []
    for r in rows_of(name, n):
        buf.append(r)
        if len(buf) == 10_000 or len(buf) == n:
            t = pa.Table.from_pylist(buf); buf = []
            w = w or pq.ParquetWriter(p, t.schema)
            w.write_table(t)
    if buf: w.write_table(pa.Table.from_pylist(buf))
    w.close()
    return p

def child(*args, path=ROOT):
    env = {**os.environ, 'PYTHONPATH': f'{path}{os.pathsep}{os.environ.get("PYTHONPATH", "")}', 'HF_DATASETS_DISABLE_PROGRESS_BARS': '1'}
    env.pop('TOKENIZERS_PARALLELISM', None)   # the tokenizer's threads as users get them
    return run_process([sys.executable, __file__, '--child', *map(str, args)], env=env)

def folder_mb(d:Path)->float: return sum(f.stat().st_size for f in Path(d).rglob('*') if f.is_file()) / 2**20

# ---- the measurements, each in its own process ----------------------------------------------------------------------
def do_prepare(file, cache, num_proc):
    from ft_nb.data import prepare_dataset
    from ft_nb.testing import load_tok
    tok = load_tok('smollm2')
    t = time.perf_counter()
    ds, rep = prepare_dataset(file, tok, num_proc=int(num_proc), cache_dir=cache, errors='skip')
    print(json.dumps(dict(s=time.perf_counter() - t, rows=len(ds), rows_in=rep.rows_in, tokens=rep.total_tokens)))

def do_template(file, n):
    "apply_chat_template alone on the first `n` rows (read and normalised first, not timed): one conversation per call, and 256 per call."
    import itertools
    from ft_nb.data import _file_records, fix_tokenizer, to_messages
    from ft_nb.testing import load_tok
    tok = load_tok('smollm2'); fix_tokenizer(tok)
    convs = [[{k: v for k, v in m.items() if k in ('role', 'content')} for m in to_messages(r)] for _, r in itertools.islice(_file_records(Path(file)), int(n))]
    t = time.perf_counter()
    for c in convs: tok.apply_chat_template(c, tokenize=True)
    one = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(0, len(convs), 256): tok.apply_chat_template(convs[i:i + 256], tokenize=True)
    print(json.dumps(dict(s=one, batched_s=time.perf_counter() - t, rows=len(convs))))

def do_train(ds_dir, with_length):
    "Seconds from the finetune call to the end of the first optimizer step."
    import datasets
    from transformers import TrainerCallback
    from ft_nb.models import load_model
    from ft_nb.testing import tiny_llama
    from ft_nb.train import finetune
    ds = datasets.load_from_disk(ds_dir)
    if with_length == '0': ds = ds.remove_columns(['length'])
    model, tok = load_model(tiny_llama(folder=Path(ds_dir).parent/'model'), quant=None)
    first = {}
    class First(TrainerCallback):
        def on_step_end(self, args, state, control, **kw): first.setdefault('t', time.perf_counter())
    t = time.perf_counter()
    finetune(model, tok, ds, output_dir=Path(ds_dir).parent/f'out-{with_length}-{os.getpid()}', method='lora', max_steps=2,
             per_device_train_batch_size=4, gradient_accumulation_steps=1, save_strategy='no', progress='none', callbacks=[First()])
    print(json.dumps(dict(first_step_s=first['t'] - t, rows=len(ds))))

def tokenized(n:int, folder:Path)->Path:
    "An `n`-row tokenized dataset (input_ids, attention_mask, labels, length; random lengths 20-200) saved to disk."
    import datasets, numpy as np, pyarrow as pa
    d = folder/f'tokenized-{n}'
    if d.exists(): return d
    rng = np.random.default_rng(0)
    lens = rng.integers(20, 200, n)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))
    ids = rng.integers(3, 40000, int(lens.sum())).astype(np.int32)
    labels = ids.copy(); labels[::3] = -100
    col = lambda v: pa.ListArray.from_arrays(offsets, pa.array(v))
    t = pa.table({'input_ids': col(ids), 'attention_mask': col(np.ones_like(ids, dtype=np.int8)), 'labels': col(labels), 'length': pa.array(lens)})
    datasets.Dataset(t).save_to_disk(str(d))
    return d

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rows', type=int, nargs='*', default=[10_000, 100_000])
    ap.add_argument('--sets', nargs='*', default=list(SETS))
    ap.add_argument('--formats', nargs='*', default=['jsonl', 'parquet'])
    ap.add_argument('--num-proc', type=int, nargs='*', default=[1, 2])
    ap.add_argument('--train', type=int, nargs='*', default=[])
    ap.add_argument('--before', default=None)
    ap.add_argument('--work', default=None, help='a folder to keep the generated files in (default: a temporary one, removed)')
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work or tmp); work.mkdir(exist_ok=True)
        if a.rows:
            print('| set | rows | file | num_proc | rows/s | peak RSS MB | cache MB | cached call s | apply_chat_template rows/s, one / 256 per call | time vs it, one / 256 per call |')
            print('|---|---|---|---|---|---|---|---|---|---|')
        for n in a.rows:
            for name in a.sets:
                ref = None
                for fmt in a.formats:
                    f = write(name, n, fmt, work)
                    if ref is None:
                        r = json.loads(child('template', f, min(n, 20_000))[2]); ref, refb = r['rows'] / r['s'], r['rows'] / r['batched_s']
                    for np_ in a.num_proc:
                        cache = work/f'cache-{name}-{n}-{fmt}-{np_}'
                        _, rss, out = child('prepare', f, cache, np_); r = json.loads(out)
                        again = json.loads(child('prepare', f, cache, np_)[2])
                        rate = r['rows_in'] / r['s']
                        print(f"| {name} | {n:,} | {fmt} ({f.stat().st_size / 2**20:.0f} MB) | {np_} | {rate:,.0f} | {rss:,.0f} | {folder_mb(cache):,.0f} "
                              f"| {again['s']:.2f} | {ref:,.0f} / {refb:,.0f} | {ref / rate:.2f}x / {refb / rate:.2f}x |", flush=True)
                        subprocess.run(['rm', '-rf', str(cache)])
                        if a.before:
                            _, rss, out = child('prepare', f, cache, np_, path=Path(a.before)); r = json.loads(out)
                            again = json.loads(child('prepare', f, cache, np_, path=Path(a.before))[2])
                            rate = r['rows_in'] / r['s']
                            print(f"| {name} (before) | {n:,} | {fmt} | {np_} | {rate:,.0f} | {rss:,.0f} | {folder_mb(cache):,.0f} "
                                  f"| {again['s']:.2f} | {ref:,.0f} / {refb:,.0f} | {ref / rate:.2f}x / {refb / rate:.2f}x |", flush=True)
                            subprocess.run(['rm', '-rf', str(cache)])
        if a.train:
            print('\n| rows | ft_nb | dataset | finetune() to first optimizer step, s | peak RSS MB |\n|---|---|---|---|---|')
        for n in a.train:
            child('make', n, work); d = work/f'tokenized-{n}'   # made in a child: the parent stays small, so children's peak RSS is their own
            runs = [('this', ROOT, '1'), ('this', ROOT, '0')] + ([('before', Path(a.before), '0')] if a.before else [])
            for label, path, wl in runs:
                _, rss, out = child('train', d, wl, path=path)
                r = json.loads(out.strip().splitlines()[-1])
                print(f"| {n:,} | {label} | {'with' if wl == '1' else 'without'} `length` | {r['first_step_s']:.1f} | {rss:,.0f} |", flush=True)

if __name__ == '__main__':
    if sys.argv[1:2] == ['--child']:
        import warnings; warnings.filterwarnings('ignore')
        {'prepare': do_prepare, 'template': do_template, 'train': do_train, 'make': lambda n, w: tokenized(int(n), Path(w))}[sys.argv[2]](*sys.argv[3:])
    else: main()
