"Merging a QLoRA adapter into a ~100M-parameter base: peak memory stays near the merged model's size; the CLI prints the figures."
import json, shutil, subprocess, sys, tempfile, warnings
from pathlib import Path
import pytest, torch
from transformers.utils import logging as hf_logging
from ft_nb.models import load_model
from ft_nb.train import finetune
from conftest import DATA, mid_llama

hf_logging.set_verbosity_error(); hf_logging.disable_progress_bar()
warnings.filterwarnings('ignore')

@pytest.fixture(scope='module')
def mid_adapter():
    "A 113M-parameter Llama (SmolLM2's tokenizer) and a QLoRA adapter trained on it for a few steps."
    base, n_params = mid_llama(torch.bfloat16)   # 16-bit on disk, as hub checkpoints are
    adapter = tempfile.mkdtemp()
    model, tok = load_model(base)
    finetune(model, tok, DATA/'datasets'/'alpaca_en_demo.json', output_dir=adapter, method='qlora', max_steps=3, learning_rate=1e-2, max_length=64,
             per_device_train_batch_size=2, gradient_accumulation_steps=1, save_strategy='no', progress='none')
    return base, adapter, n_params

CHILD = '''
import sys, json, threading, time, warnings
warnings.filterwarnings("ignore")
import torch, transformers, peft, bitsandbytes
from ft_nb.merge import merge_adapter
def status(key): return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
peak, done = [0], threading.Event()
def sample():   # the peak of anonymous memory (the heap); VmHWM also counts the checkpoint's pages mapped from the page cache
    while not done.is_set(): peak[0] = max(peak[0], status("RssAnon:")); time.sleep(0.002)
threading.Thread(target=sample, daemon=True).start()
open("/proc/self/clear_refs", "w").write("5")   # reset VmHWM to the current RSS, after the imports
before, anon = status("VmRSS:"), status("RssAnon:")
rep = merge_adapter(sys.argv[1], sys.argv[2], dtype="bf16")
done.set()
print(json.dumps({"rss_grew": status("VmHWM:") - before, "anon_grew": peak[0] - anon, "max_dlogit": rep.vs_trained_max}))
'''

def test_merge_peak_memory(mid_adapter, tmp_path):
    """Peak heap growth of a whole merge (two 4-bit loads, dequantization, merge, verification, save) against the merged size.
    Measured per phase: each 4-bit load through transformers on the CPU grows the heap by about 1.6x the merged size while it
    quantizes, and that sets the peak (1.6-2.6x over runs); dequantizing, merging and saving add less than that. Not the ~1.3x
    we aim for: the bound here only says that no phase holds two full copies plus the 4-bit one."""
    base, adapter, n_params = mid_adapter
    out = subprocess.run([sys.executable, '-c', CHILD, adapter, str(tmp_path/'merged')], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    merged_bytes = sum(f.stat().st_size for f in (tmp_path/'merged').glob('*.safetensors'))
    assert abs(merged_bytes / (2 * n_params) - 1) < 0.01            # bf16, one copy of the tied embeddings
    print(f"merge of a {n_params/1e6:.0f}M model ({merged_bytes/1e6:.0f} MB merged): heap peak grew {r['anon_grew']/1e6:.0f} MB "
          f"({r['anon_grew']/merged_bytes:.2f}x), RSS with mapped files {r['rss_grew']/1e6:.0f} MB; max |dlogit| vs trained {r['max_dlogit']:.4f}")
    assert r['anon_grew'] <= 3.0 * merged_bytes, (r, merged_bytes)
    assert r['max_dlogit'] <= 0.1                                     # bf16 rounding on logits of this model's scale

def test_cli_merge(mid_adapter, tmp_path):
    base, adapter, _ = mid_adapter
    exe = shutil.which('ft_nb') or str(Path(sys.executable).parent/'ft_nb')
    r = subprocess.run([exe, 'merge', adapter, '--out', str(tmp_path/'m')], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'merged (nf4, bfloat16)' in r.stdout and 'against the model as trained' in r.stdout
    again = subprocess.run([exe, 'merge', adapter, '--out', str(tmp_path/'m')], capture_output=True, text=True, timeout=600)
    assert again.returncode == 1 and again.stderr.startswith('ft_nb merge: ') and 'exists and is not empty' in again.stderr
    assert json.loads((tmp_path/'m'/'merge_report.json').read_text())['mode'] == 'nf4'
