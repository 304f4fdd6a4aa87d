"""Faults injected into real (tiny) training runs: a full disk, two runs into one folder, broken or hostile checkpoints,
out of memory, a NaN loss, an interrupt, early stopping, bad YAML configs, remote code. Each records its figure through
the `reliability` fixture (tests/artifacts/reliability.md)."""
import hashlib, json, os, shutil, signal, subprocess, sys, textwrap, time, warnings
from pathlib import Path
import pytest, torch
from safetensors.torch import load_file
from transformers import TrainerCallback
from ft_nb.models import load_model
from ft_nb.testing import tiny_llama
from ft_nb.train import finetune, checkpoint_problem, last_checkpoint, LOCK, Guards

ROWS = [{'instruction': f'Say {w}', 'output': f'{w.title()}!'} for w in ('hi', 'yes', 'no', 'bye', 'ok', 'now', 'red', 'one')]
RUN = dict(method='lora', max_steps=4, save_strategy='steps', save_steps=2, logging_steps=1, per_device_train_batch_size=2,
           gradient_accumulation_steps=1, progress='none', seed=0)

@pytest.fixture(scope='module')
def base(tmp_path_factory): return tiny_llama(folder=tmp_path_factory.mktemp('base'))

def train(base, out, **kw):
    model, tok = load_model(base, quant=None)
    return finetune(model, tok, ROWS, output_dir=out, **{**RUN, **kw})

@pytest.fixture
def tmpfs(tmp_path):
    "A 16 MB tmpfs: a real full disk. Always unmounted."
    d = tmp_path/'disk'; d.mkdir()
    r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', str(d)], capture_output=True, text=True)
    if r.returncode: pytest.skip(f'cannot mount a tmpfs here: {r.stderr.strip()}')
    try: yield d
    finally: subprocess.run(['umount', '-l', str(d)])

def fill(disk:Path):
    "Write a ballast file until the disk is full."
    with open(disk/'ballast', 'wb', buffering=0) as f:   # unbuffered: nothing is left to flush (and fail) at close
        try:
            while True: f.write(b'\0' * 65536)
        except OSError: pass

class FillAt(TrainerCallback):
    "Fill the disk at the end of step `step` (so the next checkpoint finds no space), or at the end of training."
    def __init__(self, disk, step=None): self.disk, self.step = disk, step
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step: fill(self.disk)
    def on_train_end(self, args, state, control, **kw):
        if self.step is None: fill(self.disk)

def stale(out:Path)->list: return [str(p) for p in out.rglob('.ft_nb*')]

def adapter_equal(a, b)->bool:
    x, y = load_file(Path(a)/'adapter_model.safetensors'), load_file(Path(b)/'adapter_model.safetensors')
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)

def digest(*files)->list: return [hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files]

## Disk full

def test_disk_full_during_a_checkpoint(base, tmpfs, reliability):
    out = tmpfs/'run'
    with pytest.raises(OSError) as e: train(base, out, callbacks=[FillAt(tmpfs, step=3)])
    msg = str(e.value)
    assert f'no space left on the disk of {out} while saving checkpoint-4: a checkpoint needs about' in msg, msg
    assert 'MB are free' in msg and f'{out}/checkpoint-2 is complete' in msg and 'resume_from_checkpoint=True' in msg
    clean = (not (out/'checkpoint-4').exists() and checkpoint_problem(out/'checkpoint-2') is None and not stale(out)
             and not (out/'adapter_model.safetensors').exists())
    assert clean, (sorted(p.name for p in out.iterdir()), stale(out))
    (tmpfs/'ballast').unlink()
    res = train(base, out, resume_from_checkpoint=True)
    assert res.steps == 4 and checkpoint_problem(out/'checkpoint-4') is None and not stale(out)
    assert adapter_equal(out, out/'checkpoint-4')
    reliability.fault('disk full during a checkpoint save', survived=clean, files_lost=0)

def test_disk_full_during_the_final_adapter(base, tmpfs, reliability):
    out = tmpfs/'run'
    with warnings.catch_warnings(record=True), pytest.raises(OSError) as e: train(base, out, callbacks=[FillAt(tmpfs)])
    msg = str(e.value)
    assert f'no space left on the disk of {out} while saving the adapter: it needs about' in msg and 'nothing of it was left there' in msg, msg
    assert f"save_adapter(model, tokenizer, '{out}')" in msg and f'(from {out}/checkpoint-4)' in msg
    partial = [n for n in ('adapter_model.safetensors', 'adapter_config.json', 'tokenizer.json', 'metrics.json') if (out/n).exists()]
    assert not partial and not stale(out), (partial, stale(out))
    (tmpfs/'ballast').unlink()
    res = train(base, out, resume_from_checkpoint=True)       # the retry: nothing left to train, the adapter is written
    assert res.steps == 4 and adapter_equal(out, out/'checkpoint-4') and (out/'metrics.json').exists() and not stale(out)
    reliability.fault('disk full during the final adapter save', survived=not partial, files_lost=0)

def test_disk_full_for_metrics_and_plot(base, tmpfs, reliability, monkeypatch):
    import ft_nb.train
    from ft_nb.progress import Reporter
    out = tmpfs/'run'
    monkeypatch.setattr(ft_nb.train, 'generate_samples', lambda *a: fill(tmpfs) or [])   # the disk fills after the adapter is saved
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        res = train(base, out, sample_prompts=['Say hi'])
    said = [str(x.message) for x in w if 'metrics.json' in str(x.message)]
    assert said and said[0].startswith(f'{out}/metrics.json not written: no space left on that disk') and 'The adapter is saved' in said[0], said
    ok = res.steps == 4 and not (out/'metrics.json').exists() and adapter_equal(out, out/'checkpoint-4') and not stale(out)
    assert ok
    reliability.fault('disk full writing metrics.json', survived=ok, files_lost=0)
    rep, before = Reporter(out), (out/'loss.png').read_bytes()                      # loss.png again, on the full disk
    rep.history = [{'step': 1, 'loss': 2.0}, {'step': 2, 'loss': 1.5}]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        rep.on_train_end(None, None, None)
    said = [str(x.message) for x in w]
    ok = len(said) == 1 and said[0].startswith(f'{out}/loss.png not written (') and 'MB free there' in said[0]
    ok = ok and (out/'loss.png').read_bytes() == before and [p.name for p in out.iterdir() if 'loss.png' in p.name] == ['loss.png']   # the old one, whole
    assert ok, said
    reliability.fault('disk full writing loss.png', survived=ok, files_lost=0)

## Two runs, one folder

HOLD = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from transformers import TrainerCallback
    from ft_nb.models import load_model
    from ft_nb.testing import quiet
    from ft_nb.train import finetune
    quiet()
    base, out, go = sys.argv[1:4]
    class Wait(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            Path(go + '.waiting').touch()   # mid-run, holding the lock: the test goes on
            t = time.time()
            while not Path(go).exists() and time.time() - t < 300: time.sleep(0.2)
    model, tok = load_model(base, quant=None)
    rows = [{'instruction': 'Say hi', 'output': 'Hi!'}] * 4
    res = finetune(model, tok, rows, output_dir=out, method='lora', max_steps=2, save_strategy='steps', save_steps=1,
                   per_device_train_batch_size=2, gradient_accumulation_steps=1, progress='none', callbacks=[Wait()])
    print('steps', res.steps)
''')

def test_two_runs_into_one_folder(base, tmp_path, reliability):
    out, go, script = tmp_path/'run', tmp_path/'go', tmp_path/'hold.py'
    script.write_text(HOLD)
    first = subprocess.Popen([sys.executable, str(script), str(base), str(out), str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t = time.time()
        while not Path(f'{go}.waiting').exists() and time.time() - t < 180 and first.poll() is None: time.sleep(0.3)
        assert (out/LOCK).exists(), first.stderr.read() if first.poll() is not None else 'the first run did not start'
        before = sorted(p.name for p in out.iterdir())
        with pytest.raises(FileExistsError) as e: train(base, out)
        msg = str(e.value)
        assert msg.startswith(f'{out} is in use by another ft_nb run (pid {first.pid} on ') and 'choose another output_dir' in msg, msg
        refused = sorted(p.name for p in out.iterdir()) == before
    finally:
        go.touch()
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0 and 'steps 2' in stdout, stderr[-2000:]
    assert refused and not (out/LOCK).exists()
    reliability.fault('a second run into a busy output_dir', survived=refused, files_lost=0)

def test_a_stale_lock_does_not_block(tmp_path, reliability):
    from ft_nb.train import output_lock
    import socket
    dead = subprocess.Popen(['true']); dead.wait()
    (tmp_path/LOCK).write_text(json.dumps({'pid': dead.pid, 'host': socket.gethostname(), 'since': 'yesterday'}))
    with pytest.warns(UserWarning, match='no longer running: taken over'):
        with output_lock(tmp_path): held = json.loads((tmp_path/LOCK).read_text())['pid'] == os.getpid()
    assert held and not (tmp_path/LOCK).exists()
    reliability.fault('a lock left by a dead process', survived=held, files_lost=0)

## Broken and hostile checkpoints

@pytest.fixture(scope='module')
def three_checkpoints(base, tmp_path_factory):
    "A finished run with checkpoints 2, 4 and 6: the tests copy it and break one."
    out = tmp_path_factory.mktemp('ckpts')/'run'
    train(base, out, max_steps=6)
    return out

def copy_run(src, tmp_path)->Path:
    dst = tmp_path/'run'
    shutil.copytree(src, dst)
    return dst

def test_missing_optimizer_state_resumes_from_the_previous(base, three_checkpoints, tmp_path, reliability):
    out = copy_run(three_checkpoints, tmp_path)
    (out/'checkpoint-6'/'optimizer.pt').unlink()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        res = train(base, out, max_steps=6, resume_from_checkpoint=True)
    said = [str(x.message) for x in w if 'not resuming' in str(x.message)]
    ok = said == [f"not resuming from checkpoint-6: {out/'checkpoint-6'/'optimizer.pt'} is missing: the optimizer would restart from zero "
                  "(a checkpoint saved with save_only_model=True cannot resume). Resuming from checkpoint-4 instead."] and res.steps == 6
    assert ok, said
    state = json.loads((out/'checkpoint-6'/'trainer_state.json').read_text())
    assert [h['step'] for h in state['log_history'] if 'loss' in h] == [1, 2, 3, 4, 5, 6]   # 5 and 6 trained again from checkpoint-4
    reliability.fault('a checkpoint without optimizer.pt, resume=True', survived=ok, files_lost=0)

@pytest.mark.parametrize('fault,expect', [
    ('state', 'trainer_state.json does not parse (JSONDecodeError:'),
    ('weights', 'adapter_model.safetensors is cut short:'),
    ('scheduler', 'scheduler.pt is cut short, or was not written by torch.save')])
def test_a_broken_checkpoint_named_on_resume(base, three_checkpoints, tmp_path, reliability, fault, expect):
    out = copy_run(three_checkpoints, tmp_path)
    ck = out/'checkpoint-6'
    if fault == 'state': (ck/'trainer_state.json').write_text('{"global_step": 6, "log_hist')
    else:
        f = ck/('adapter_model.safetensors' if fault == 'weights' else 'scheduler.pt')
        f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 2])
    with pytest.raises(ValueError) as e: train(base, out, max_steps=6, resume_from_checkpoint=str(ck))
    msg = str(e.value)
    ok = msg.startswith(f'cannot resume from {ck}: {ck}/{expect}') and msg.endswith(f'The newest whole checkpoint there is {out}/checkpoint-4')
    assert ok and e.value.__traceback__ is not None and len(msg.splitlines()) == 1, msg
    reliability.fault(f'a checkpoint with a broken {fault} file, explicit resume', survived=ok, files_lost=0)

class Evil:
    "A pickle that creates a file when loaded."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (exec, (f"open({self.marker!r}, 'w').close()",))

@pytest.mark.parametrize('name,resume', [('optimizer.pt', True), ('optimizer.pt', 'path'), ('scheduler.pt', 'path'), ('rng_state.pth', 'path'),
                                         ('training_args.bin', 'path')])
def test_a_crafted_pickle_never_runs(base, three_checkpoints, tmp_path, reliability, name, resume):
    out, marker = copy_run(three_checkpoints, tmp_path), tmp_path/'pwned'
    ck = out/'checkpoint-6'
    torch.save(Evil(marker), ck/name)
    refused = f'{ck/name} asks to run code (exec), which no training run writes: refused unread.'
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        if name == 'training_args.bin':   # not read on resume: the run resumes from checkpoint-6 and never unpickles it
            train(base, out, max_steps=6, resume_from_checkpoint=str(ck))
        elif resume is True:
            train(base, out, max_steps=6, resume_from_checkpoint=True)
            said = [str(x.message) for x in w if 'not resuming' in str(x.message)]
            assert said and said[0].startswith(f'not resuming from checkpoint-6: {refused}') and said[0].endswith('Resuming from checkpoint-4 instead.'), said
        else:
            with pytest.raises(ValueError, match='asks to run code') as e: train(base, out, max_steps=6, resume_from_checkpoint=str(ck))
            assert str(e.value).startswith(f'cannot resume from {ck}: {refused}'), str(e.value)
    assert not marker.exists()
    reliability.pickle(f'{name} in a checkpoint, resume={"True" if resume is True else "its path"}', executed=marker.exists())

## Out of memory, NaN, interrupt, early stopping

def test_out_of_memory_in_the_cli(base, tmp_path, reliability, monkeypatch, capsys):
    from ft_nb.cli import main
    data, cfg = tmp_path/'train.json', tmp_path/'run.yaml'
    data.write_text(json.dumps(ROWS))
    cfg.write_text(f'model: {base}\ndata: {data}\nquant: null\nmethod: lora\noutput_dir: {tmp_path/"out"}\nprogress: none\nmax_steps: 2\n'
                   'save_strategy: no\nper_device_train_batch_size: 2\n')
    mine = digest(data, cfg)
    def oom(self, *a, **k): raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')
    monkeypatch.setattr(Guards, 'on_step_begin', oom, raising=False)   # a callback raising what CUDA raises
    code = main(['train', str(cfg)])
    err = capsys.readouterr().err
    ok = code == 1 and err.startswith('ft_nb train: ran out of memory. The estimate for lora at batch 2') and 'Traceback' not in err and err.count('\n') == 1
    assert ok, err
    reliability.fault('CUDA out of memory (ft_nb train)', survived=ok, files_lost=0)
    reliability.modified('config and data after an out-of-memory run', sum(a != b for a, b in zip(mine, digest(data, cfg))))

class PoisonAt(TrainerCallback):
    "Turn a LoRA weight to NaN at the end of step `step`: that step's checkpoint is saved with NaN weights, the next loss is NaN."
    def __init__(self, step): self.step = step
    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step == self.step:
            with torch.no_grad(): next(p for n, p in model.named_parameters() if 'lora_B' in n).fill_(float('nan'))

def test_nan_loss_keeps_the_last_good_adapter(base, tmp_path, reliability):
    out = tmp_path/'run'
    with warnings.catch_warnings(record=True):
        res = train(base, out, max_steps=10, callbacks=[PoisonAt(4)])
    assert res.stopped.startswith('the loss became nan at step 5: training stopped.'), res.stopped
    assert f'The last good checkpoint is {out}/checkpoint-2: its adapter is the one written to {out}.' in res.stopped
    assert 'NaN' in checkpoint_problem(out/'checkpoint-4') and last_checkpoint(out) == str(out/'checkpoint-2')
    ok = adapter_equal(out, out/'checkpoint-2') and all(torch.isfinite(t).all() for t in load_file(out/'adapter_model.safetensors').values())
    assert ok and not stale(out)
    reliability.fault('NaN loss', survived=ok, files_lost=0)

class PressStop(TrainerCallback):
    "What the notebook's stop button does: SIGINT to the kernel process, in the middle of the run."
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 3: os.kill(os.getpid(), signal.SIGINT)

def test_interrupt_stops_at_a_step_with_a_checkpoint(base, tmp_path, reliability, capsys):
    out, before = tmp_path/'run', signal.getsignal(signal.SIGINT)   # default_int_handler, or SIG_IGN in a process started in the background
    res = train(base, out, max_steps=8, save_steps=100, progress='console', callbacks=[PressStop()])
    err = capsys.readouterr().err
    n = res.steps
    assert res.stopped.startswith(f'stopped at step {n}; resume with finetune(..., resume_from_checkpoint=True)'), res.stopped
    assert n in (3, 4) and f'stopped at step {n}; resume with' in err                        # what the panel (here the console) says
    ok = checkpoint_problem(out/f'checkpoint-{n}') is None and not (out/'adapter_model.safetensors').exists()
    assert ok and signal.getsignal(signal.SIGINT) == before   # restored
    res2 = train(base, out, max_steps=8, save_steps=100, resume_from_checkpoint=True)
    assert res2.steps == 8 and res2.stopped is None and (out/'adapter_model.safetensors').exists()
    reliability.fault('interrupt (stop button / Ctrl-C) mid-run', survived=ok, files_lost=0)

class FakeEval(TrainerCallback):
    "Eval losses that improve until step 4 and then get worse (early stopping's decision, made deterministic)."
    LOSSES = {2: 3.0, 4: 2.0, 6: 2.5, 8: 2.7, 10: 2.9}
    def on_evaluate(self, args, state, control, metrics=None, **kw):
        if state.global_step in self.LOSSES: metrics['eval_loss'] = self.LOSSES[state.global_step]

def test_early_stopping_keeps_the_best_adapter(base, tmp_path, reliability):
    out = tmp_path/'run'
    model, tok = load_model(base, quant=None)
    res = finetune(model, tok, ROWS, ROWS[:4], output_dir=out, early_stopping_patience=2, callbacks=[FakeEval()],
                   **{**RUN, 'max_steps': 20, 'save_total_limit': 2})
    assert res.steps == 8 and res.best_step == 4, (res.steps, res.best_step, res.stopped)
    assert res.stopped == (f'early stopping at step 8: the eval loss did not improve for 2 evaluations. The adapter written is the best one, '
                           f'from step 4 (eval loss 2, {out}/checkpoint-4)')
    ok = adapter_equal(out, out/'checkpoint-4') and not adapter_equal(out, out/'checkpoint-8')
    assert ok
    reliability.fault('over-fitting: early stopping', survived=ok, files_lost=0)

## Configs, remote code, links

@pytest.mark.parametrize('text,expect', [
    ('learning_rat: 1e-4', 'unknown key(s) in {cfg}: learning_rat (did you mean learning_rate?).'),
    ('learning_rate: fast', '{cfg}: learning_rate must be a number, not \'fast\''),
    ('max_steps: [1, 2]', '{cfg}: max_steps must be a whole number, not [1, 2]'),
    ('save_strategy: sometimes', "{cfg}: save_strategy is 'sometimes', not one of no, steps, epoch, best"),
    ('data: nowhere/train.jsonl', '{cfg}: data: nowhere/train.jsonl does not exist (relative paths are read from'),
    ('lora: !!python/object/apply:os.system ["touch {marker}"]', '{cfg}: not valid YAML (could not determine a constructor'),
])
def test_yaml_config_errors_are_one_line(tmp_path, reliability, text, expect):
    cfg, marker = tmp_path/'run.yaml', tmp_path/'pwned'
    body = {'model': 'some/model', 'data': str(tmp_path/'train.json')}
    key = text.split(':')[0]
    cfg.write_text(''.join(f'{k}: {v}\n' for k, v in body.items() if k != key) + text.format(marker=marker) + '\n')
    (tmp_path/'train.json').write_text('[]')
    env = {**os.environ, 'PYTHONPATH': str(Path(__file__).parents[1])}
    r = subprocess.run([shutil.which('ft_nb') or 'ft_nb', 'train', str(cfg)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    ok = r.returncode == 1 and r.stderr.startswith('ft_nb train: ' + expect.format(cfg=cfg)) and r.stderr.count('\n') == 1 and not marker.exists()
    assert ok, r.stderr
    reliability.fault(f'config: {text.split(":")[0]} {text.split(":", 1)[1].strip()[:30]}', survived=ok, files_lost=0)

def test_save_strategy_no_is_read_as_meant(tmp_path):
    from ft_nb.cli import load_run_config
    (tmp_path/'train.json').write_text('[]')
    (tmp_path/'run.yaml').write_text(f"model: m\ndata: {tmp_path/'train.json'}\nsave_strategy: no\neval_strategy: off\nlearning_rate: 2e-4\n")
    cfg = load_run_config(tmp_path/'run.yaml')
    assert (cfg['save_strategy'], cfg['eval_strategy'], cfg['learning_rate']) == ('no', 'no', 2e-4)

def test_remote_code_is_off_by_default(tmp_path, reliability):
    "A model folder whose config asks for its own Python code: loading it without trust_remote_code=True runs none of it."
    d, marker = Path(tiny_llama(folder=tmp_path/'m')), tmp_path/'pwned'
    cfg = json.loads((d/'config.json').read_text())
    cfg['auto_map'] = {'AutoConfig': 'evil.EvilConfig', 'AutoModelForCausalLM': 'evil.EvilModel'}
    (d/'config.json').write_text(json.dumps(cfg))
    (d/'evil.py').write_text(f"open({str(marker)!r}, 'w').close()\nfrom transformers import LlamaConfig as EvilConfig, LlamaForCausalLM as EvilModel\n")
    try: load_model(d, quant=None)
    except (ValueError, OSError) as e: print(e)
    assert not marker.exists()
    reliability.fault('remote code in a model folder (trust_remote_code off)', survived=not marker.exists(), files_lost=0)

def test_a_symlinked_output_folder_is_said(base, tmp_path, reliability):
    real, link = tmp_path/'elsewhere', tmp_path/'out'
    real.mkdir(); link.symlink_to(real)
    with pytest.warns(UserWarning, match=f'output_dir {link} is a symbolic link to {real}: the run writes there'):
        train(base, link, max_steps=1, save_strategy='no')
    ok = (real/'adapter_model.safetensors').exists()
    reliability.fault('a symlinked output_dir', survived=ok, files_lost=0)
