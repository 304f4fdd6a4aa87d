"A run killed with SIGKILL in the middle of writing a checkpoint resumes from the last complete one and ends with the same adapter."
import json, signal, subprocess, sys, textwrap
import torch
from safetensors.torch import load_file
from ft_nb.testing import tiny_llama
from conftest import DATA

SCRIPT = textwrap.dedent('''
    import os, signal, sys
    from transformers import Trainer
    from ft_nb.models import load_model
    from ft_nb.testing import quiet
    from ft_nb.train import finetune
    quiet()
    model_dir, out, mode = sys.argv[1:4]
    if mode == 'kill':   # die like a preempted Colab VM: after the weights of checkpoint-9 are written, before its trainer_state.json
        save_rng = Trainer._save_rng_state
        def dying(self, output_dir):
            if str(output_dir).endswith('checkpoint-9'): os.kill(os.getpid(), signal.SIGKILL)
            return save_rng(self, output_dir)
        Trainer._save_rng_state = dying
    model, tok = load_model(model_dir)   # 4-bit NF4; the ChatML markers are added and their rows trained
    res = finetune(model, tok, sys.argv[4], output_dir=out, method='qlora', max_length=64, max_steps=12, save_steps=3, save_strategy='steps',
                   per_device_train_batch_size=2, gradient_accumulation_steps=2, seed=0, progress='none', logging_steps=1,
                   resume_from_checkpoint=mode == 'resume')
    print('steps', res.steps)
''')

def _run(script, model_dir, out, mode):
    return subprocess.run([sys.executable, str(script), str(model_dir), str(out), mode, str(DATA/'datasets'/'alpaca_en_demo.json')],
                          capture_output=True, text=True, timeout=600)

def test_sigkill_mid_save_resumes_to_the_same_adapter(tmp_path):
    script, base = tmp_path/'run.py', tmp_path/'base'
    script.write_text(SCRIPT); tiny_llama('gpt2', base)
    full = _run(script, base, tmp_path/'full', 'full')
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _run(script, base, tmp_path/'run', 'kill')
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    ckpts = sorted(p.name for p in (tmp_path/'run').glob('checkpoint-*'))
    assert ckpts == ['checkpoint-3', 'checkpoint-6', 'checkpoint-9'], ckpts          # 9 is half-written: weights, no state
    assert (tmp_path/'run'/'checkpoint-9'/'adapter_model.safetensors').exists() and not (tmp_path/'run'/'checkpoint-9'/'trainer_state.json').exists()
    assert not (tmp_path/'run'/'adapter_model.safetensors').exists()
    resumed = _run(script, base, tmp_path/'run', 'resume')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'steps 12' in resumed.stdout
    state = json.loads((tmp_path/'run'/'checkpoint-12'/'trainer_state.json').read_text())
    losses = [h['step'] for h in state['log_history'] if 'loss' in h]
    assert losses[:7] == [1, 2, 3, 4, 5, 6, 7]                                      # history carried over from checkpoint-6, then 7.. again
    a, b = load_file(tmp_path/'full'/'adapter_model.safetensors'), load_file(tmp_path/'run'/'adapter_model.safetensors')
    assert a.keys() == b.keys() and len(a) > 0
    for k in a: torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    moved = {k for k in a if not torch.equal(a[k], load_file(tmp_path/'run'/'checkpoint-6'/'adapter_model.safetensors')[k])}
    assert moved, 'the adapter did not change after checkpoint-6: the comparison would prove nothing'
