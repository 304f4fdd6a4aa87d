"`ft_nb train` under torchrun (DDP) and under accelerate's FSDP: two CPU processes (gloo), both train, one adapter is written, and it is the trained one."
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
        unsharded = [n for n, p in model.named_parameters() if type(p).__name__ != 'DTensor']   # before a forward: the root keeps its weights gathered after one
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True))
        model.eval()
        with torch.no_grad(): logits = model(input_ids=IDS).logits.float()
        model.train()
        q = getattr(model.config, 'quantization_config', None)
        if state.is_world_process_zero: torch.save({'state': sd, 'logits': logits, 'fsdp2': isinstance(model, torch.distributed.fsdp.FSDPModule),
                                                    'quant_storage': str(q.bnb_4bit_quant_storage) if q else None,
                                                    'unsharded': unsharded}, sys.argv[2])

cfg = load_run_config(sys.argv[1], _parse_overrides(sys.argv[3:]))
res = run_training({**cfg, 'accelerator_config': {'use_configured_state': True}, 'callbacks': [Grab()]})   # the Trainer keeps that state
out = {k: v for k, v in res.metrics().items() if k != 'samples'}
open(f"{sys.argv[2]}.rank{os.environ['RANK']}.json", 'w').write(json.dumps(out))
'''
REPO = Path(__file__).resolve().parents[1]
IDS = torch.arange(1, 17)[None]

def _fsdp_run(tmp_path, base, out, quant=None, **settings):
    "`ft_nb train` under `accelerate launch` with the repository's FSDP config, overridden only where the CPU needs it; (output, results by rank, gathered)."
    (tmp_path/'runner.py').write_text(RUNNER)
    run = dict(model=str(base), data=str(DATA/'datasets'/'alpaca_en_demo.json'), quant=quant, dtype='bf16', method='qlora' if quant else 'lora',
               max_length=64, output_dir=str(out), progress='console', per_device_train_batch_size=4, gradient_accumulation_steps=1, max_steps=6,
               save_strategy='no', logging_steps=1, seed=0, lora={'dropout': 0.0})
    run.update(settings)
    (tmp_path/f'{out.name}.yaml').write_text(json.dumps(run))   # JSON is YAML
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1'}
    cmd = [shutil.which('accelerate'), 'launch', '--config_file', str(REPO/'configs'/'accelerate'/'fsdp.yaml'),
           '--num_processes', '2', '--mixed_precision', 'no', '--fsdp_cpu_ram_efficient_loading', 'false',   # the CPU overrides
           str(tmp_path/'runner.py'), str(tmp_path/f'{out.name}.yaml'), str(tmp_path/f'{out.name}.grab')]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-6000:])
    results = [json.loads((tmp_path/f'{out.name}.grab.rank{i}.json').read_text()) for i in (0, 1)]
    assert [(x['world_size'], x['steps']) for x in results] == [(2, 6), (2, 6)] and results[0]['train_loss'] == results[1]['train_loss']
    assert len(re.findall(r'step +6 +loss', r.stdout + r.stderr)) == 1   # one console report, from the main process
    return r, results, torch.load(tmp_path/f'{out.name}.grab', weights_only=False)

def _check_adapter(out, grab, model):
    "The adapter in `out` is, tensor for tensor, what the sharded model held (torch's own gather), trained, and PEFT loads it on `model` to the logits it gave."
    from peft import PeftModel
    assert grab['fsdp2'] and grab['unsharded'] == []     # FSDP2 sharded the model, every weight of it (not DDP)
    saved = load_file(out/'adapter_model.safetensors')
    held = {k.replace('.default', ''): v for k, v in grab['state'].items()}
    assert set(saved) == set(held) and len(saved) == 28
    for k in saved: assert torch.equal(saved[k], held[k]), k
    assert all(saved[k].abs().sum() > 0 for k in saved if 'lora_B' in k)   # trained: lora_B starts at zero
    assert {v.dtype for v in saved.values()} == {torch.float32}
    m = PeftModel.from_pretrained(model, out).eval()
    with torch.no_grad(): logits = m(input_ids=IDS).logits.float()
    assert (logits - grab['logits']).abs().max() < 1e-3, (logits - grab['logits']).abs().max()
    assert len(list(out.glob('adapter_model.safetensors'))) == 1 and (out/'loss.png').exists() and json.loads((out/'metrics.json').read_text())['world_size'] == 2
    return saved

def test_fsdp_lora_16bit(tmp_path):
    "LoRA on a bf16 base under FSDP2: checkpoints every 3 steps, the adapter gathered and written once; resuming from step 3 ends at the same adapter."
    from transformers import AutoModelForCausalLM
    from ft_nb.train import checkpoint_problem
    base, out = tmp_path/'base', tmp_path/'out'
    tiny_llama(folder=base, dtype=torch.bfloat16)
    r, results, grab = _fsdp_run(tmp_path, base, out, save_strategy='steps', save_steps=3, sample_prompts=['Name a colour.'], max_new_tokens=4)
    saved = _check_adapter(out, grab, AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16))
    assert json.loads((out/'metrics.json').read_text())['eos_rate'] is not None   # both processes answered the prompt (the weights are gathered for each step)
    for ck in ('checkpoint-3', 'checkpoint-6'): assert checkpoint_problem(out/ck) is None, checkpoint_problem(out/ck)
    assert (out/'checkpoint-3'/'optimizer_0').is_dir() and (out/'checkpoint-3'/'pytorch_model_fsdp_0').is_dir()   # accelerate's sharded state
    assert all(torch.equal(load_file(out/'checkpoint-6'/'adapter_model.safetensors')[k], v) for k, v in saved.items())
    r2, results2, grab2 = _fsdp_run(tmp_path, base, tmp_path/'resumed', resume_from_checkpoint=str(out/'checkpoint-3'))
    resumed = load_file(tmp_path/'resumed'/'adapter_model.safetensors')
    assert max((resumed[k] - saved[k]).abs().max().item() for k in saved) < 1e-6

def test_fsdp_qlora(tmp_path):
    "QLoRA under FSDP2: the 4-bit weights are stored as bf16 (bnb_4bit_quant_storage, set by load_model under FSDP) and sharded like the rest (uint8 ones accelerate would leave whole on every process)."
    from ft_nb.models import load_model
    base, out = tmp_path/'base', tmp_path/'out'
    tiny_llama(folder=base, dtype=torch.bfloat16)
    r, results, grab = _fsdp_run(tmp_path, base, out, quant='4bit')
    assert grab['quant_storage'] == 'torch.bfloat16'
    model, _ = load_model(base, quant='4bit', dtype='bf16')   # in one process: plain uint8 storage, the same 4-bit weights
    _check_adapter(out, grab, model)

def test_accelerate_configs_parse():
    "The configs the README points to load as accelerate reads them, for one node with one process per GPU."
    from accelerate.commands.config.config_args import load_config_from_file
    cfgs = {p.stem: load_config_from_file(str(p)) for p in sorted((REPO/'configs'/'accelerate').glob('*.yaml'))}
    assert sorted(cfgs) == ['ddp', 'fsdp']
    assert [(c.distributed_type, c.num_machines, c.num_processes) for c in cfgs.values()] == [('MULTI_GPU', 1, 2), ('FSDP', 1, 2)]
    assert cfgs['fsdp'].fsdp_config['fsdp_version'] == 2 and cfgs['fsdp'].mixed_precision == 'bf16'
