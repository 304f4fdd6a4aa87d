"""Merging adapters that ft_nb did not train: plain PEFT scripts, Trainer checkpoints, pickled weights, DoRA/rsLoRA,
bases saved in 4-bit (the `-bnb-4bit` repos Unsloth users train on), and bases that moved.

Every adapter here is written the way the other tool writes it, by that tool's own API (PEFT's `save_pretrained`,
transformers' `Trainer`), with none of the files ft_nb adds (no tokenizer, no `ft_nb_base.json`). The base is the demo's
tiny Llama, pretrained briefly on its tasks (fp32 checkpoint), so its logits have a realistic scale (about 10)."""
import json, random, shutil, subprocess, sys, tempfile, warnings
from pathlib import Path
import pytest, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from ft_nb.demo import build_demo_base, demo_example
from ft_nb.generation import _4bit_as_in_training, logit_gap
from ft_nb.merge import merge_adapter, read_adapter

PROMPTS = ['What is 3 plus 4?', 'Spell the word tiger.', 'Which word comes first in the alphabet: lamp, ocean, apple?']
TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']
# The 4-bit settings of the seed recipe (the Llama-2 QLoRA notebooks): NF4, fp16 compute, no double quantization
SEED_4BIT = dict(load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_compute_dtype=torch.float16, bnb_4bit_use_double_quant=False)
EXE = shutil.which('ft_nb') or str(Path(sys.executable).parent/'ft_nb')

@pytest.fixture(scope='module')
def tasks(): rng = random.Random(0); return [demo_example(rng) for _ in range(400)]

@pytest.fixture(scope='module')
def base(tasks, tmp_path_factory):
    "The demo's tiny Llama (fp32 checkpoint, no chat template in its tokenizer), pretrained a few epochs."
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return build_demo_base(tmp_path_factory.mktemp('base'), tasks, epochs=6)

def train_plain(model, tok, tasks, steps=40, lr=3e-3):
    "A plain PyTorch loop over the demo tasks as raw text: what a minimal PEFT script does."
    rng, tok.pad_token = random.Random(1), tok.unk_token
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        enc = tok([f"{r['instruction']} {r['output']}</s>" for r in rng.sample(tasks, 8)], return_tensors='pt', padding=True)
        model(**enc, labels=enc['input_ids'].masked_fill(enc['attention_mask'] == 0, -100)).loss.backward()
        opt.step(); opt.zero_grad()
    return model

def peft_qlora(base, tasks, **lora):
    "A QLoRA model as the seed recipe builds it: 4-bit load, `prepare_model_for_kbit_training`, `get_peft_model`; trained a little."
    m = AutoModelForCausalLM.from_pretrained(base, quantization_config=BitsAndBytesConfig(**SEED_4BIT))
    m = get_peft_model(prepare_model_for_kbit_training(m, use_gradient_checkpointing=False),
                       LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS, task_type='CAUSAL_LM', **lora))
    return train_plain(m, AutoTokenizer.from_pretrained(base), tasks)

@pytest.fixture(scope='module')
def plain_qlora(base, tasks, tmp_path_factory):
    "A QLoRA adapter saved by plain PEFT (`model.save_pretrained(dir)`): adapter_config.json and the weights, nothing else."
    out = tmp_path_factory.mktemp('plain_qlora')
    peft_qlora(base, tasks).save_pretrained(out)
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'adapter_config.json', 'adapter_model.safetensors']
    return out

@torch.no_grad()
def logits(model, tok, prompts=PROMPTS):
    "fp32 logits of each prompt as plain text (the base's tokenizer has no chat template), 4-bit layers as in training."
    _4bit_as_in_training(model.eval())
    return [model(**tok(p, return_tensors='pt')).logits[0].float() for p in prompts]

def greedy(model, tok, prompts=PROMPTS, n=8):
    model.eval()
    return [tok.decode(model.generate(**tok(p, return_tensors='pt'), max_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)[0]) for p in prompts]

def as_trained(base, adapter, **bnb):
    "The model as trained: a fresh 4-bit load of the checkpoint with the seed recipe's settings, plus the adapter."
    m = AutoModelForCausalLM.from_pretrained(base, quantization_config=BitsAndBytesConfig(**(SEED_4BIT | bnb)))
    return PeftModel.from_pretrained(m, str(adapter))

def cli_merge(*args):
    return subprocess.run([EXE, 'merge', *map(str, args)], capture_output=True, text=True, timeout=600)

def test_plain_peft_qlora_nf4(base, plain_qlora, tmp_path):
    """`ft_nb merge ADAPTER --out DIR --mode nf4` on a plain PEFT QLoRA adapter: the tokenizer comes from the base, the 4-bit
    weights are rebuilt from the checkpoint's own dtype (fp32), and the saved model is within 0.06 of a fresh 4-bit load plus
    the adapter, with the same greedy text."""
    r = cli_merge(plain_qlora, '--out', tmp_path/'m', '--mode', 'nf4')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'no ft_nb_base.json beside the adapter' in r.stdout and "checkpoint's own dtype (float32)" in r.stdout, r.stdout
    assert 'not with the model as trained' in r.stdout, r.stdout   # the figure is against the rebuilt base: said so
    tok = AutoTokenizer.from_pretrained(tmp_path/'m')
    test_tok = AutoTokenizer.from_pretrained(base)
    assert tok.get_vocab() == test_tok.get_vocab() and tok.chat_template is None   # the base's tokenizer, unchanged
    merged = AutoModelForCausalLM.from_pretrained(tmp_path/'m', dtype=torch.bfloat16)
    trained = as_trained(base, plain_qlora)
    gap = logit_gap(logits(trained, tok), logits(merged, tok))
    print(f"plain PEFT QLoRA adapter, --mode nf4 (bf16): max |dlogit| {gap['max_dlogit']:.4f} against a fresh 4-bit load + adapter")
    assert gap['max_dlogit'] <= 0.06, gap
    assert greedy(merged, tok) == greedy(trained, tok)
    full = AutoModelForCausalLM.from_pretrained(base)   # what the seed recipe merges into: the full-precision base
    seed = PeftModel.from_pretrained(full, str(plain_qlora)).merge_and_unload()
    seed_gap = logit_gap(logits(trained, tok), logits(seed, tok))['max_dlogit']
    print(f'the same adapter merged into the full-precision base: {seed_gap:.4f}')
    assert seed_gap > 2 * gap['max_dlogit']

def test_plain_peft_auto_is_ambiguous(plain_qlora, tmp_path):
    "With no record, `--mode auto` merges into the full-precision base and says that it guessed, naming --mode nf4."
    r = cli_merge(plain_qlora, '--out', tmp_path/'m')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'merged (original, bfloat16)' in r.stdout and '--mode nf4' in r.stdout, r.stdout
    rep = json.loads((tmp_path/'m'/'merge_report.json').read_text())
    assert rep['mode'] == 'original' and any('not recorded' in n for n in rep['notes']), rep

def test_check_4bit_fp32(base, plain_qlora, tmp_path):
    "In fp32 the rebuilt 4-bit weights plus the adapter are the model as trained (fp16 compute aside): --check-4bit measures it."
    rep = merge_adapter(plain_qlora, tmp_path/'m', mode='nf4', dtype='fp32', check_4bit=True, prompts=PROMPTS)
    assert rep.max_dlogit < 1e-3 and rep.vs_trained_max < 0.02, rep
    assert not any('not with the model as trained' in n for n in rep.notes), rep.notes

def test_prequantized_base(base, tasks, tmp_path):
    """A base saved in 4-bit (a `quantization_config` in config.json, as `unsloth/...-bnb-4bit` repos are): `mode='auto'`
    merges into its dequantized weights. The adapter_config.json is a stand-in for an Unsloth one, naming the hub repo
    (`base_model_name_or_path: unsloth/...-bnb-4bit`), so `--base` points at the local copy."""
    q4 = tmp_path/'base-bnb-4bit'
    AutoModelForCausalLM.from_pretrained(base, quantization_config=BitsAndBytesConfig(**SEED_4BIT)).save_pretrained(q4)
    AutoTokenizer.from_pretrained(base).save_pretrained(q4)
    adapter = tmp_path/'adapter'
    peft_qlora(q4, tasks).save_pretrained(adapter)
    cfg = json.loads((adapter/'adapter_config.json').read_text())
    (adapter/'adapter_config.json').write_text(json.dumps(cfg | {'base_model_name_or_path': 'unsloth/tiny-llama-bnb-4bit', 'revision': None}))
    r = cli_merge(adapter, '--out', tmp_path/'m', '--base', q4)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'merged (nf4, bfloat16)' in r.stdout and 'saved in 4-bit' in r.stdout, r.stdout
    tok = AutoTokenizer.from_pretrained(tmp_path/'m')
    merged = AutoModelForCausalLM.from_pretrained(tmp_path/'m', dtype=torch.bfloat16)
    assert 'quantization_config' not in json.loads((tmp_path/'m'/'config.json').read_text())
    trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(q4), str(adapter))
    gap = logit_gap(logits(trained, tok), logits(merged, tok))['max_dlogit']
    print(f'adapter on a base saved in 4-bit, auto mode: max |dlogit| {gap:.4f} against the 4-bit base + adapter')
    assert gap <= 0.06
    with pytest.raises(ValueError, match='no full-precision base to merge into'): merge_adapter(adapter, tmp_path/'o', base=q4, mode='original')

def test_trainer_checkpoint(base, tasks, tmp_path):
    "transformers' Trainer saves `checkpoint-N/` folders (adapter, tokenizer, optimizer state): merge one; the run folder names the latest."
    from transformers import Trainer, TrainingArguments
    tok = AutoTokenizer.from_pretrained(base); tok.pad_token = tok.unk_token
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, task_type='CAUSAL_LM'))
    rows = [tok(f"{r['instruction']} {r['output']}</s>") for r in tasks[:64]]
    collate = lambda b: dict(e := tok.pad(b, return_tensors='pt'), labels=e['input_ids'].masked_fill(e['attention_mask'] == 0, -100))
    args = TrainingArguments(tmp_path/'run', max_steps=6, save_steps=3, per_device_train_batch_size=8, learning_rate=3e-3, report_to='none',
                             use_cpu=True, logging_steps=100, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=rows, data_collator=collate, processing_class=tok).train()
    with pytest.raises(FileNotFoundError, match=f"the latest is {tmp_path/'run'/'checkpoint-6'}"): merge_adapter(tmp_path/'run', tmp_path/'m')
    rep = merge_adapter(tmp_path/'run'/'checkpoint-6', tmp_path/'m', prompts=PROMPTS)
    assert rep.mode == 'original' and rep.passed and rep.adapter_effect > 10 * rep.max_dlogit, rep
    assert read_adapter(tmp_path/'run'/'checkpoint-6')['tokenizer']   # the Trainer saved the tokenizer: used as the adapter's own

def test_pickled_adapter(base, tmp_path):
    "`adapter_model.bin` (PEFT's `safe_serialization=False`, older tools' default) is a pickle: refused unless the user opts in."
    m = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=8, target_modules=TARGETS, init_lora_weights=False))
    m.save_pretrained(tmp_path/'a', safe_serialization=False)
    assert (tmp_path/'a'/'adapter_model.bin').exists() and not (tmp_path/'a'/'adapter_model.safetensors').exists()
    r = cli_merge(tmp_path/'a', '--out', tmp_path/'m')
    assert r.returncode == 1 and 'is a pickle file' in r.stderr and '--allow-pickle' in r.stderr and not (tmp_path/'m').exists(), r.stderr
    r = cli_merge(tmp_path/'a', '--out', tmp_path/'m', '--allow-pickle')
    assert r.returncode == 0 and (tmp_path/'m'/'model.safetensors').exists(), r.stderr[-3000:]

@pytest.mark.parametrize('kind', ['dora', 'rslora', 'dora+rslora'])
def test_dora_rslora(base, kind, tmp_path):
    "DoRA (a learned magnitude per output) and rsLoRA (scaling alpha/sqrt(r)) adapters merge, and verify, like plain LoRA."
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, init_lora_weights=False, use_dora='dora' in kind, use_rslora='rslora' in kind)
    torch.manual_seed(0)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), cfg).save_pretrained(tmp_path/'a')
    rep = merge_adapter(tmp_path/'a', tmp_path/'m', dtype='fp32', prompts=PROMPTS)
    assert rep.max_dlogit < 1e-3 and rep.adapter_effect > 1, rep
    rep16 = merge_adapter(tmp_path/'a', tmp_path/'m16', prompts=PROMPTS)
    assert rep16.passed and rep16.adapter_effect > 10 * rep16.max_dlogit, rep16

def test_dora_qlora(base, tasks, tmp_path):
    "A DoRA adapter trained on a 4-bit base (QLoRA + DoRA), merged into the rebuilt 4-bit weights, is the model as trained."
    peft_qlora(base, tasks, use_dora=True).save_pretrained(tmp_path/'a')
    rep = merge_adapter(tmp_path/'a', tmp_path/'m', mode='nf4', dtype='fp32', prompts=PROMPTS)
    tok = AutoTokenizer.from_pretrained(base)
    gap = logit_gap(logits(as_trained(base, tmp_path/'a'), tok), logits(AutoModelForCausalLM.from_pretrained(tmp_path/'m'), tok))['max_dlogit']
    assert rep.max_dlogit < 1e-3 and gap < 0.02, (rep, gap)

def test_moved_base(base, plain_qlora, tmp_path):
    "The adapter names a local folder that is gone: the error names it and says --base; --base wins; a wrong --base names both."
    moved = tmp_path/'moved'; shutil.copytree(plain_qlora, moved)
    cfg = json.loads((moved/'adapter_config.json').read_text())
    (moved/'adapter_config.json').write_text(json.dumps(cfg | {'base_model_name_or_path': str(tmp_path/'old'/'base')}))
    r = cli_merge(moved, '--out', tmp_path/'m')
    assert r.returncode == 1 and str(tmp_path/'old'/'base') in r.stderr and '--base' in r.stderr, r.stderr
    assert cli_merge(moved, '--out', tmp_path/'m', '--base', base).returncode == 0
    other = tmp_path/'other'
    build_demo_base(other, [demo_example(random.Random(2)) for _ in range(20)], hidden=192, epochs=1)
    with pytest.raises(ValueError, match=f"does not fit the base {other} \\(the adapter names {tmp_path/'old'/'base'}\\)"):
        merge_adapter(moved, tmp_path/'x', base=other)
