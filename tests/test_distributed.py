"`ft_nb train` unchanged under torchrun: two CPU processes (gloo), both train, one adapter is written."
import json, os, re, shutil, subprocess, sys
from ft_nb.testing import tiny_llama
from conftest import DATA

def test_two_processes_gloo(tmp_path):
    tiny_llama(folder=tmp_path/'base')
    out = tmp_path/'out'
    (tmp_path/'run.yaml').write_text(f"model: {tmp_path/'base'}\ndata: {DATA/'datasets'/'alpaca_en_demo.json'}\nmax_length: 64\n"
                                     f"output_dir: {out}\nprogress: console\nper_device_train_batch_size: 4\ngradient_accumulation_steps: 1\n"
                                     "max_steps: 6\nsave_strategy: 'no'\nlogging_steps: 1\n")
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1'}
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--tee', '3', '--log-dir', str(tmp_path/'logs'),
                        shutil.which('ft_nb'), 'train', str(tmp_path/'run.yaml')], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    results = {}
    for rank in (0, 1):   # each process prints its result as JSON; torchrun --tee prefixes its lines with [default<rank>]:
        lines = [l.split(':', 1)[1] for l in r.stdout.splitlines() if l.startswith(f'[default{rank}]:')]
        start = next(i for i, l in enumerate(lines) if l.strip() == '{')
        results[rank] = json.loads('\n'.join(lines[start:]))
    assert results[0]['world_size'] == results[1]['world_size'] == 2
    assert results[0]['steps'] == results[1]['steps'] == 6
    assert results[0]['train_loss'] == results[1]['train_loss']      # the Trainer reduces the loss over both processes
    assert len(list(out.glob('adapter_model.safetensors'))) == 1 and (out/'loss.png').exists()
    assert json.loads((out/'metrics.json').read_text())['world_size'] == 2
    assert len(re.findall(r'step +1 +loss', r.stdout + r.stderr)) == 1   # one console report, from the main process
