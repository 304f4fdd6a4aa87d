"""Injected faults on files: a run killed while it writes the tokenized cache, corrupt caches, broken model and
tokenizer folders, files that are not UTF-8, paths that lead out of the folder the user named, remote code."""
import inspect, json, os, shutil, signal, subprocess, sys, time, traceback, warnings
from pathlib import Path
import pytest
from ft_nb.data import RecordError, load_records, prepare_dataset
from ft_nb.models import load_model, model_config
from ft_nb.testing import load_tok, tiny_model

ROOT = Path(__file__).parents[1]

def only_ft_nb(e:Exception)->bool:
    "Whether every frame of `e`'s traceback below the test is ft_nb's own, and no other exception is chained to it (no deep traceback from another library)."
    frames = [f.filename for f in traceback.extract_tb(e.__traceback__)][1:]
    return all(f'{os.sep}ft_nb{os.sep}' in f for f in frames) and (e.__cause__ is None) and (e.__context__ is None or e.__suppress_context__)

# ---- the tokenized cache -----------------------------------------------------------------------------------------
PREP = '''
import sys, time
from ft_nb.data import prepare_dataset
from ft_nb.testing import load_tok
t = time.time()
ds, rep = prepare_dataset(sys.argv[1], load_tok('smollm2'), cache_dir=sys.argv[2])
print(len(ds), rep.rows_out, round(time.time() - t, 1))
'''

@pytest.fixture(scope='module')
def big_text(data_dir, tmp_path_factory):
    "3,000 raw-text rows (the C4 demo, 10 times, numbered): enough that `map` writes its cache in several batches."
    rows = [json.loads(l) for l in (data_dir/'datasets'/'text_c4_demo.jsonl').read_text().splitlines() if l.strip()]
    p = tmp_path_factory.mktemp('big')/'c4x10.jsonl'
    p.write_text(''.join(json.dumps({'text': f'{i}: ' + r['text']}) + '\n' for i in range(10) for r in rows))
    return p

def files(d:Path)->dict: return {p.relative_to(d): p.stat().st_size for p in d.rglob('*') if p.is_file()}

def kill_while_writing(data:Path, cache:Path, after:float)->dict:
    "Start prepare_dataset in a process, SIGKILL it `after` seconds after its temporary cache file first has bytes; the cache folder's files then."
    env = {**os.environ, 'PYTHONPATH': f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen([sys.executable, '-c', PREP, str(data), str(cache)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0, before = time.time(), set(files(cache))
    try:
        while time.time() - t0 < 180 and proc.poll() is None:
            if any(size for name, size in files(cache).items() if not name.name.startswith('tokenized') and name not in before): break
            time.sleep(0.02)
        assert proc.poll() is None, f'the run ended before it was killed: {proc.communicate()}'
        time.sleep(after)
        seen = files(cache)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None: proc.kill()
    assert proc.returncode == -signal.SIGKILL
    return seen

def test_sigkill_during_cache_write(big_text, tmp_path, reliability):
    """`datasets.map` writes `cache_file_name` through a temporary file in the same folder and renames it when complete:
    a kill mid-write (here twice: as the first batch lands, and half a second later) leaves that temporary file and no
    cache. The next run builds the cache without any cleanup, and a leftover older than an hour is removed by a later run."""
    from ft_nb.data import tokenize_text
    cache = tmp_path/'cache'; cache.mkdir()
    for after in (0.0, 0.5):
        seen = kill_while_writing(big_text, cache, after)
        left = files(cache)
        targets = [p for p in left if p.name.startswith('tokenized') and p.suffix == '.arrow']
        temps = [p for p in left if not p.name.startswith('tokenized')]
        ok = bool(temps) and not targets   # killed mid-write: a temporary file, never a partial cache
        reliability.fault(f'SIGKILL {after}s into the tokenized cache write', survived=ok, files_lost=len(targets))
        assert ok, (seen, left)
    tok = load_tok('smollm2')
    ds, rep = prepare_dataset(big_text, tok, cache_dir=cache)
    assert (len(ds), rep.rows_out) == (3000, 3000) and Path(rep.cache_file).exists()
    texts = [json.loads(l)['text'] for l in big_text.read_text().splitlines()]
    for i in (0, 1234, 2999): assert ds[i]['input_ids'] == tokenize_text(texts[i], tok)['input_ids']
    for p in temps: os.utime(cache/p, (time.time() - 7200,) * 2)   # the killed runs' leftovers, two hours later
    prepare_dataset(big_text, tok, cache_dir=cache)
    assert not [p for p in files(cache) if not p.name.startswith('tokenized')]

def test_corrupt_cache_not_served(data_dir, tmp_path, reliability):
    "A cache file cut short, or one holding fewer rows than the data (a copy from elsewhere), is rebuilt with a warning, never served."
    tok, src = load_tok('smollm2'), data_dir/'datasets'/'alpaca_en_demo.json'
    ds, rep = prepare_dataset(src, tok, cache_dir=tmp_path)
    cache = Path(rep.cache_file)
    whole, want = cache.read_bytes(), ds['input_ids'][::100]
    small, srep = prepare_dataset([{'instruction': 'a', 'output': 'b'}], tok, cache_dir=tmp_path/'small')
    for what, data in [('truncated', whole[:len(whole) // 2]), ('empty', b''), ('fewer rows', Path(srep.cache_file).read_bytes())]:
        bad = cache.with_name('incoming.tmp'); bad.write_bytes(data)
        os.replace(bad, cache)   # a new file in its place: cutting the old one in place would pull the pages from under `ds`, which maps it
        with pytest.warns(UserWarning, match='incomplete or unreadable'):
            again, rep2 = prepare_dataset(src, tok, cache_dir=tmp_path)
        ok = len(again) == 999 and again['input_ids'][::100] == want and cache.read_bytes() == whole
        reliability.fault(f'a cache file {what}', survived=ok)
        assert ok, what

# ---- model and tokenizer folders ---------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    return Path(tiny_model(folder=tmp_path_factory.mktemp('tiny')))

def broken(model_dir, tmp_path, how:str)->Path:
    "A copy of the tiny model folder, broken as `how` says."
    d = tmp_path/how; shutil.copytree(model_dir, d)
    if how == 'truncated safetensors':
        w = (d/'model.safetensors').read_bytes(); (d/'model.safetensors').write_bytes(w[:len(w) * 2 // 3])
    elif how == 'missing shard':
        from transformers import AutoModelForCausalLM
        (d/'model.safetensors').unlink()
        AutoModelForCausalLM.from_pretrained(model_dir).save_pretrained(d, max_shard_size='10MB')
        shards = sorted(d.glob('model-*.safetensors')); assert len(shards) > 1
        shards[-1].unlink()
    elif how == 'no weights': (d/'model.safetensors').unlink()
    elif how == 'truncated config.json': (d/'config.json').write_text((d/'config.json').read_text()[:40])
    elif how == 'truncated tokenizer.json': (d/'tokenizer.json').write_text((d/'tokenizer.json').read_text()[:5000])
    elif how == 'no tokenizer.json': (d/'tokenizer.json').unlink()
    elif how == 'corrupt tokenizer.json': (d/'tokenizer.json').write_text('{"version": "1.0", "model": 5}')
    return d

CASES = {'truncated safetensors': 'model.safetensors is truncated', 'missing shard': 'shard(s) that are not in',
         'no weights': 'has config.json but no weights', 'truncated config.json': 'config.json is not valid JSON',
         'truncated tokenizer.json': 'tokenizer.json is not valid JSON', 'no tokenizer.json': 'has no tokenizer',
         'corrupt tokenizer.json': 'the tokenizer cannot be loaded'}

@pytest.mark.parametrize('how', list(CASES))
def test_broken_model_folder(model_dir, tmp_path, reliability, how):
    "Each broken folder: an error naming the folder or file and what is wrong, raised by ft_nb, with no traceback from safetensors, tokenizers or torch."
    d = broken(model_dir, tmp_path, how)
    before = files(d)
    with pytest.raises((ValueError, FileNotFoundError)) as e: load_model(d, quant=None)
    ok = CASES[how] in str(e.value) and str(d) in str(e.value) and only_ft_nb(e.value) and files(d) == before
    reliability.fault(f'model folder: {how}', survived=ok)
    assert ok, (str(e.value), [f.filename for f in traceback.extract_tb(e.value.__traceback__)])

def test_remote_code_not_run(tmp_path, reliability):
    "trust_remote_code is off by default: a folder whose config asks for its own code is refused, and the code never runs."
    assert inspect.signature(load_model).parameters['trust_remote_code'].default is False
    assert inspect.signature(model_config).parameters['trust_remote_code'].default is False
    d, marker = tmp_path/'remote', tmp_path/'ran'
    d.mkdir()
    (d/'config.json').write_text(json.dumps({'model_type': 'ftnb_evil', 'auto_map': {'AutoConfig': 'configuration_evil.EvilConfig', 'AutoModelForCausalLM': 'modeling_evil.EvilModel'}}))
    for f in ('configuration_evil.py', 'modeling_evil.py'): (d/f).write_text(f'open({str(marker)!r}, "w").write("ran")\n')
    with pytest.raises(ValueError, match='trust_remote_code=True') as e: load_model(d, quant=None)
    ok = not marker.exists() and only_ft_nb(e.value)
    reliability.fault('model folder with its own code (auto_map), trust_remote_code left off', survived=ok)
    assert ok

def test_crafted_pickle_weights(model_dir, tmp_path, reliability):
    "A pytorch_model.bin whose pickle runs a command: loading refuses it (weights-only unpickling) and the command never runs."
    import torch
    d, marker = tmp_path/'pickle', tmp_path/'pwned'
    shutil.copytree(model_dir, d); (d/'model.safetensors').unlink()
    class Evil:
        def __reduce__(self): return (os.system, (f'touch {marker}',))
    torch.save({'model.embed_tokens.weight': Evil()}, d/'pytorch_model.bin')
    with pytest.raises(ValueError, match='pytorch_model.bin cannot be read as weights') as e: load_model(d, quant=None)
    reliability.pickle('pytorch_model.bin that runs a command when unpickled', executed=marker.exists())
    assert not marker.exists() and str(d) in str(e.value) and only_ft_nb(e.value)
    (d/'pytorch_model.bin').write_bytes((model_dir/'model.safetensors').read_bytes()[:1000])   # not a torch file at all
    with pytest.raises(ValueError, match='pytorch_model.bin cannot be read as weights') as e: load_model(d, quant=None)
    ok = only_ft_nb(e.value)
    reliability.fault('model folder: a corrupt pytorch_model.bin', survived=ok)
    assert ok

# ---- dataset files -----------------------------------------------------------------------------------------------
def test_not_utf8_dataset(tmp_path, reliability):
    "A Latin-1 file: the line and field with the byte that is not UTF-8 are named; other lines load; UTF-16 and a BOM read as json.load reads them."
    p = tmp_path/'latin.jsonl'
    p.write_bytes('{"instruction": "Hi", "output": "Yo"}\n{"instruction": "Café?", "output": "Oui"}\n'.encode('latin-1'))
    with pytest.raises(RecordError) as e: load_records(p)
    ok = str(e.value).startswith(f"{p} line 2: field 'instruction': byte 0xe9, which is not UTF-8, at character 3")
    ds, bad = load_records(p, errors='skip')
    ok = ok and len(ds) == 1 and [b.where for b in bad] == [f'{p} line 2']
    for enc in ('utf-8-sig', 'utf-16', 'utf-16-le', 'utf-32'):
        q = tmp_path/f'{enc}.json'
        q.write_bytes(json.dumps([{'instruction': 'Café?', 'output': 'Oui'}], ensure_ascii=False).encode(enc))
        ok = ok and json.load(open(q, 'rb'))[0]['instruction'] == load_records(q)[0]['instruction'] == 'Café?'
    reliability.fault('a dataset file that is not UTF-8', survived=ok)
    assert ok

def test_paths_stay_inside(tmp_path, reliability):
    "A dataset_info.json entry's file_name that leads out of the folder is refused; a folder's symlink to a file outside it is not read, with a warning."
    outside, folder = tmp_path/'secret.json', tmp_path/'data'
    outside.write_text(json.dumps([{'instruction': 'secret', 'output': 'secret'}]))
    folder.mkdir()
    (folder/'train.json').write_text(json.dumps([{'q': 'What?', 'a': 'That.'}]))
    entry = {'file_name': 'train.json', 'columns': {'prompt': 'q', 'response': 'a'}}
    ok = load_records(folder, columns=entry)['q'] == ['What?']
    for name in ('../secret.json', str(outside), 'sub/../../secret.json'):
        with pytest.raises(ValueError, match='leads outside') as e: load_records(folder, columns={**entry, 'file_name': name})
        ok = ok and str(folder) in str(e.value)
    other = tmp_path/'other'; other.mkdir()
    (other/'good.json').write_text(json.dumps([{'instruction': 'fine', 'output': 'yes'}]))
    (other/'link.json').symlink_to(outside)
    with pytest.warns(UserWarning, match='not reading 1 file.* that link outside the folder'):
        ds = load_records(other)
    ok = ok and ds['instruction'] == ['fine']
    reliability.fault('paths leading outside the dataset folder (../ in file_name, a symlink)', survived=ok)
    assert ok
