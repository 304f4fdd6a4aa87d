"The memory estimator against measurements on a ~100M-parameter model (CPU): weights, adapter and optimizer state after a real step, and peak RSS of loading (the 4-bit footprint is checked in nbs/03_memory.ipynb)."
import json, subprocess, sys
import pytest
from ft_nb.models import load_model
from ft_nb.methods import apply_method
from ft_nb.memory import estimate_memory, measure_training_memory
from ft_nb.testing import mid_llama


@pytest.fixture(scope='module')
def mid_model(): return mid_llama()[0]

@pytest.mark.parametrize('method', ['lora', 'qlora', 'full'])
def test_weights_adapter_optimizer_within_25pct(mid_model, method):
    m, _ = load_model(mid_model, quant='4bit' if method == 'qlora' else None)
    got = measure_training_memory(apply_method(m, method, gradient_checkpointing=False))
    est = estimate_memory(mid_model, method, dtype='fp32')
    want = (est['weights'] + est['adapter'] + est['optimizer']) * 1e9
    assert abs(sum(got.values()) / want - 1) < 0.25, (got, dict(est))

CHILD = '''
import sys, json, warnings
warnings.filterwarnings("ignore")
import torch, transformers, peft
from ft_nb.models import load_model
def status(key): return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")   # reset the peak (VmHWM) to the current RSS, after the imports
before = status("VmRSS:")
m, _ = load_model(sys.argv[1], quant=None, dtype="fp32")
with torch.no_grad(): m(input_ids=torch.tensor([[1, 2, 3]]))   # touch every weight: safetensors maps the file lazily
print(json.dumps({"before": before, "peak": status("VmHWM:"), "after": status("VmRSS:")}))
'''

def test_peak_rss_of_loading_matches_weights(mid_model):
    "Loading the fp32 model and running it raises peak RSS by about the estimated weights (no second copy held)."
    out = subprocess.run([sys.executable, '-c', CHILD, mid_model], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    want = estimate_memory(mid_model, 'lora', dtype='fp32')['weights'] * 1e9
    print(f"peak RSS grew {(r['peak'] - r['before'])/1e6:.0f} MB loading; estimated weights {want/1e6:.0f} MB")
    assert abs((r['peak'] - r['before']) / want - 1) < 0.25, (r, want)
