"""Faults during a merge: a full disk (a real tmpfs), a merge killed while it writes, a truncated adapter, a crafted pickle.
Each checks what the user sees, that nothing is left half-written, and that the adapter folder is untouched."""
import os, pickle, shutil, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from ft_nb.merge import merge_adapter
from ft_nb.testing import tiny_llama

EXE = shutil.which('ft_nb') or str(Path(sys.executable).parent/'ft_nb')
TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']

def lora_adapter(base, out, **save):
    "A LoRA adapter on `base` as a plain PEFT script saves it (random B, so it changes the logits)."
    torch.manual_seed(0)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=8, target_modules=TARGETS, init_lora_weights=False)).save_pretrained(out, **save)
    return out

def snapshot(d:Path)->dict: return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(d).iterdir()}

@pytest.fixture(scope='module')
def base(): return tiny_llama()

@pytest.fixture(scope='module')
def adapter(base, tmp_path_factory): return lora_adapter(base, tmp_path_factory.mktemp('adapter'))

@pytest.fixture
def small_disk(tmp_path):
    "A real 64 MiB tmpfs (root only), unmounted afterwards."
    if os.geteuid() != 0: pytest.skip('mounting a tmpfs needs root')
    d = tmp_path/'disk'; d.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', str(d)], check=True)
    yield d
    subprocess.run(['umount', '-l', str(d)], check=False)

def fill(disk:Path, leave:int)->Path:
    "Fill `disk` so that `leave` bytes stay free; the filler file, to delete when space is freed."
    filler = disk/'filler'
    with open(filler, 'wb') as f: f.write(b'\0' * (shutil.disk_usage(disk).free - leave))
    return filler

def merged_bytes(base, adapter, tmp_path)->int:
    "Bytes of the merged weights (the tokenizer and config files aside)."
    rep = merge_adapter(adapter, tmp_path/'probe', prompts=['Hi'])
    return sum(p.stat().st_size for p in Path(rep.out_dir).glob('*.safetensors'))

def test_disk_full_before_writing(base, adapter, small_disk, tmp_path, reliability):
    "Too little space for the model: refused before writing, naming the folder and the space needed; the retry works once space is freed."
    before, need = snapshot(adapter), merged_bytes(base, adapter, tmp_path)
    filler = fill(small_disk, need // 4)
    r = subprocess.run([EXE, 'merge', str(adapter), '--out', str(small_disk/'m')], capture_output=True, text=True, timeout=600)
    ok = (r.returncode == 1 and f'not enough space in {small_disk} for the merged model: it needs about' in r.stderr
          and 'Traceback' not in r.stderr and not (small_disk/'m').exists() and not list(small_disk.glob('.m.partial-*')))
    filler.unlink()
    retry = subprocess.run([EXE, 'merge', str(adapter), '--out', str(small_disk/'m')], capture_output=True, text=True, timeout=600)
    ok = ok and retry.returncode == 0 and (small_disk/'m'/'model.safetensors').exists() and not list(small_disk.glob('.m.partial-*'))
    reliability.fault('disk full before the merge writes', ok, files_lost=int(snapshot(adapter) != before))
    assert ok, (r.stderr[-2000:], retry.stderr[-2000:])

def test_disk_full_while_writing(base, adapter, small_disk, tmp_path, reliability):
    """Space for the weights but not for the tokenizer after them (SmolLM2's tokenizer.json is 2 MB): the disk fills in the
    middle of the write. The partial folder is removed, the error says what is needed, and the retry succeeds."""
    before, need = snapshot(adapter), merged_bytes(base, adapter, tmp_path)
    filler = fill(small_disk, need + int(1.3 * 2**20))
    with pytest.raises(OSError, match='not enough space in .* for the merged model') as e: merge_adapter(adapter, small_disk/'m', prompts=['Hi'])
    ok = not (small_disk/'m').exists() and not list(small_disk.glob('.m.partial-*')) and 'Nothing was written' in str(e.value)
    filler.unlink()
    rep = merge_adapter(adapter, small_disk/'m', prompts=['Hi'])
    ok = ok and rep.passed and (small_disk/'m'/'tokenizer.json').exists() and not list(small_disk.glob('.m.partial-*'))
    reliability.fault('disk full while the merge writes its shards', ok, files_lost=int(snapshot(adapter) != before))
    assert ok

KILLED = '''
import sys, warnings; warnings.filterwarnings("ignore")
from ft_nb.merge import merge_adapter
merge_adapter(sys.argv[1], sys.argv[2], prompts=["Hi"])
'''

def test_killed_while_writing(tmp_path, reliability):
    """SIGKILL as soon as the merge starts writing (a 60M-parameter model, so the write takes a while): `out` is absent, never
    partial; the next merge removes the dead run's temporary folder and succeeds without manual cleanup."""
    base = tiny_llama(folder=tmp_path/'base', hidden_size=512, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4)
    adapter = lora_adapter(base, tmp_path/'adapter')
    before, out = snapshot(adapter), tmp_path/'m'
    p = subprocess.Popen([sys.executable, '-c', KILLED, str(adapter), str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not list(tmp_path.glob('.m.partial-*/*')) and p.poll() is None and time.time() - t0 < 300: time.sleep(0.002)
    os.kill(p.pid, signal.SIGKILL); p.wait()
    stale = list(tmp_path.glob('.m.partial-*'))
    ok = not out.exists() and len(stale) == 1   # killed mid-write: only the temporary folder holds anything
    rep = merge_adapter(adapter, out, prompts=['Hi'])
    ok = ok and rep.passed and (out/'model.safetensors').exists() and not list(tmp_path.glob('.m.partial-*'))
    reliability.fault('merge killed (SIGKILL) while writing', ok, files_lost=int(snapshot(adapter) != before))
    assert ok, stale

def test_truncated_adapter(adapter, tmp_path, reliability):
    "A truncated adapter_model.safetensors (an interrupted copy or download): one line naming the file, no traceback, nothing written."
    bad = tmp_path/'bad'; shutil.copytree(adapter, bad)
    w = bad/'adapter_model.safetensors'
    w.write_bytes(w.read_bytes()[:w.stat().st_size // 2])
    r = subprocess.run([EXE, 'merge', str(bad), '--out', str(tmp_path/'m')], capture_output=True, text=True, timeout=600)
    ok = r.returncode == 1 and f'{w} is truncated' in r.stderr and 'Traceback' not in r.stderr and not (tmp_path/'m').exists()
    reliability.fault('truncated adapter_model.safetensors', ok)
    assert ok, r.stderr[-2000:]

class Payload:
    "Unpickling this creates a file: what a malicious adapter_model.bin would do instead."
    def __init__(self, path): self.path = path
    def __reduce__(self): return (os.system, (f'touch {self.path}',))

def test_crafted_pickle_never_runs(adapter, tmp_path, reliability):
    "An adapter_model.bin that runs code when unpickled: refused without --allow-pickle, and not executed with it (weights only)."
    bad, marker = tmp_path/'bad', tmp_path/'pwned'
    shutil.copytree(adapter, bad)
    (bad/'adapter_model.safetensors').unlink()
    with open(bad/'adapter_model.bin', 'wb') as f: pickle.dump({'base_model.model.x': Payload(marker)}, f)
    r = subprocess.run([EXE, 'merge', str(bad), '--out', str(tmp_path/'m')], capture_output=True, text=True, timeout=600)
    refused = r.returncode == 1 and 'is a pickle file' in r.stderr
    r2 = subprocess.run([EXE, 'merge', str(bad), '--out', str(tmp_path/'m'), '--allow-pickle'], capture_output=True, text=True, timeout=600)
    ok = refused and r2.returncode == 1 and 'holds more than tensors' in r2.stderr and 'Traceback' not in r2.stderr
    reliability.pickle('adapter_model.bin merged with --allow-pickle', executed=marker.exists())
    reliability.fault('crafted adapter_model.bin', ok and not marker.exists())
    assert not marker.exists() and ok, (r.stderr[-1000:], r2.stderr[-2000:])
