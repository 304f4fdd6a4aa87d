"`ft_nb train` unchanged under torchrun: two CPU processes (gloo), both train, one adapter is written."
import json, os, re, shutil, subprocess, sys
from pathlib import Path
import torch
from safetensors.torch import load_file
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

# FSDP. accelerate enables FSDP only on accelerators: on a CPU-only machine its state says MULTI_CPU and the Trainer wraps the
# model in DDP instead, silently. The runner below records the state accelerate would have on GPUs (the device type; the processes
# still run on the CPU over gloo) before ft_nb builds its Trainer, which then takes accelerate's and transformers' FSDP path as on
# GPUs (FSDP2 `fully_shard`, the gather for saving, sharded checkpoints). It also gathers the trainable weights itself, with torch's
# own API, and the logits of fixed ids, at the end of training: what the saved adapter must reproduce.
RUNNER = '''
import json, os, sys, torch
from accelerate.state import PartialState
from accelerate.utils import DistributedType
from transformers import TrainerCallback
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
PartialState(cpu=True)
PartialState._shared_state['distributed_type'] = DistributedType.MULTI_GPU
from ft_nb.cli import load_run_config, _parse_overrides, run_training
from ft_nb.testing import quiet
quiet()
IDS = torch.arange(1, 17)[None]

class Grab(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kw):
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True))
        model.eval()
        with torch.no_grad(): logits = model(input_ids=IDS).logits.float()
        model.train()
        if state.is_world_process_zero: torch.save({'state': sd, 'logits': logits, 'fsdp2': isinstance(model, torch.distributed.fsdp.FSDPModule)}, sys.argv[2])

cfg = load_run_config(sys.argv[1], _parse_overrides(sys.argv[3:]))
res = run_training({**cfg, 'accelerator_config': {'use_configured_state': True}, 'callbacks': [Grab()]})   # the Trainer keeps that state
out = {k: v for k, v in res.metrics().items() if k != 'samples'}
out['fsdp_trainer'] = os.environ.get('ACCELERATE_USE_FSDP')
open(f"{sys.argv[2]}.rank{os.environ['RANK']}.json", 'w').write(json.dumps(out))
'''
REPO = Path(__file__).resolve().parents[1]

def _fsdp_run(tmp_path, base, out, *extra):
    "`ft_nb train` under `accelerate launch` with the repository's FSDP config, overridden only where the CPU needs it."
    (tmp_path/'runner.py').write_text(RUNNER)
    (tmp_path/'fsdp.yaml').write_text(f"model: {base}\ndata: {DATA/'datasets'/'alpaca_en_demo.json'}\nquant: null\ndtype: bf16\nmethod: lora\n"
                                      f"max_length: 64\noutput_dir: {out}\nprogress: console\nper_device_train_batch_size: 4\ngradient_accumulation_steps: 1\n"
                                      "max_steps: 6\nsave_strategy: steps\nsave_steps: 3\nlogging_steps: 1\nseed: 0\nlora: {dropout: 0.0}\n")
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1'}
    cmd = [shutil.which('accelerate'), 'launch', '--config_file', str(REPO/'configs'/'accelerate'/'fsdp.yaml'),
           '--num_processes', '2', '--mixed_precision', 'no', '--fsdp_cpu_ram_efficient_loading', 'false',   # the CPU overrides
           str(tmp_path/'runner.py'), str(tmp_path/'fsdp.yaml'), str(tmp_path/f'{out.name}.grab'), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-6000:])
    return r, [json.loads((tmp_path/f'{out.name}.grab.rank{i}.json').read_text()) for i in (0, 1)], torch.load(tmp_path/f'{out.name}.grab', weights_only=False)

def test_fsdp_lora_16bit(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from ft_nb.train import checkpoint_problem
    base, out = tmp_path/'base', tmp_path/'out'
    tiny_llama(folder=base, dtype=torch.bfloat16)
    r, results, grab = _fsdp_run(tmp_path, base, out)
    assert grab['fsdp2']      # FSDP2 sharded the model (not DDP)
    assert [(x['world_size'], x['steps']) for x in results] == [(2, 6), (2, 6)] and results[0]['train_loss'] == results[1]['train_loss']
    assert len(list(out.glob('adapter_model.safetensors'))) == 1 and (out/'loss.png').exists()
    assert json.loads((out/'metrics.json').read_text())['world_size'] == 2
    assert len(re.findall(r'step +1 +loss', r.stdout + r.stderr)) == 1
    for ck in ('checkpoint-3', 'checkpoint-6'): assert checkpoint_problem(out/ck) is None, checkpoint_problem(out/ck)
    # the adapter on disk is, tensor for tensor, what the sharded model held: torch's own gather of it
    saved = load_file(out/'adapter_model.safetensors')
    held = {k.replace('.default', ''): v for k, v in grab['state'].items()}
    assert set(saved) == set(held) and len(saved) == 28
    for k in saved: assert torch.equal(saved[k], held[k]), k
    assert all(saved[k].abs().sum() > 0 for k in saved if 'lora_B' in k)   # trained: lora_B starts at zero
    assert {v.dtype for v in saved.values()} == {torch.float32}
    # PEFT loads it on the bf16 base in one process and gives the logits the sharded model gave
    m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16), out).eval()
    with torch.no_grad(): logits = m(input_ids=torch.arange(1, 17)[None]).logits.float()
    assert (logits - grab['logits']).abs().max() < 0.05, (logits - grab['logits']).abs().max()
    assert torch.equal(load_file(out/'checkpoint-6'/'adapter_model.safetensors')['base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight'],
                       saved['base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight'])
