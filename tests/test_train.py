"QLoRA through finetune on a base whose tokenizer lacks the chat markers and whose head is untied (Llama-2 style)."
import tempfile, warnings
import torch
from ft_nb.models import load_model
from ft_nb.train import finetune
from ft_nb.testing import tiny_llama
from conftest import DATA


def test_added_tokens_untied_head_train_and_generate():
    d = tiny_llama('gpt2')
    model, tok = load_model(d)                                   # 4-bit; ChatML markers and a pad token added
    assert model.ft_nb_new_token_ids == [50257, 50258, 50259]
    out = tempfile.mkdtemp()
    res = finetune(model, tok, [{'instruction': 'Say hi', 'output': 'Hi!'}] * 8, output_dir=out, method='qlora', max_steps=2,
                   per_device_train_batch_size=4, gradient_accumulation_steps=1, progress='none', save_strategy='no',
                   sample_prompts=['Hello'], max_new_tokens=4)
    assert res.steps == 2 and len(res.samples) == 1            # generation after training works (no dtype mismatch)
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert any('modules_to_save' in n for n in trainable) and any('trainable_tokens' in n for n in trainable)
    assert set(trainable.values()) == {torch.float32}

def test_4bit_training_base_is_recorded():
    "The adapter folder, and each checkpoint, says its base was loaded in NF4 with double quantization: `ft_nb.merge` reads it to pick the merge."
    import json
    from pathlib import Path
    from ft_nb.models import TRAINING_BASE
    d = tiny_llama()
    model, tok = load_model(d)
    assert model.ft_nb_new_token_ids == []                     # SmolLM2's tokenizer has its markers: no tokens added
    out = tempfile.mkdtemp()
    finetune(model, tok, [{'instruction': 'Say hi', 'output': 'Hi!'}] * 4, output_dir=out, method='qlora', max_steps=1,
             per_device_train_batch_size=4, gradient_accumulation_steps=1, progress='none', save_strategy='steps', save_steps=1)
    rec = json.loads((Path(out)/TRAINING_BASE).read_text())
    assert (rec['quant'], rec['quant_type'], rec['double_quant'], rec['quant_storage']) == ('4bit', 'nf4', True, 'uint8'), rec
    assert json.loads((Path(out)/'checkpoint-1'/TRAINING_BASE).read_text()) == rec
    card = (Path(out)/'README.md').read_text()                  # the model card says so too, and the loading code quantizes the base the same way
    assert '| method | qlora |' in card and '| base quantized for training | 4bit nf4, double quantization |' in card and '- qlora' in card
    assert "BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_use_double_quant=True" in card

def test_checkpoints_hold_what_the_adapter_holds():
    "With added tokens PEFT would put both whole embedding matrices (and the head three times) in every checkpoint: ours match the final adapter."
    import os
    from pathlib import Path
    from safetensors import safe_open
    from ft_nb.merge import read_adapter
    d = tiny_llama('gpt2')
    model, tok = load_model(d)
    out = Path(tempfile.mkdtemp())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        finetune(model, tok, DATA/'datasets'/'alpaca_en_demo.json', output_dir=out, method='qlora', max_steps=2, max_length=64,
                 per_device_train_batch_size=2, gradient_accumulation_steps=1, progress='none', save_strategy='steps', save_steps=1)
    assert not [w for w in caught if 'save_embedding_layers' in str(w.message)]
    def keys(folder):
        with safe_open(folder/'adapter_model.safetensors', 'pt') as f: return sorted(f.keys())
    final = keys(out)
    assert 'base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta' in final and 'base_model.model.lm_head.weight' in final
    for ck in ('checkpoint-1', 'checkpoint-2'):
        assert keys(out/ck) == final, (ck, keys(out/ck))
        assert os.path.getsize(out/ck/'adapter_model.safetensors') == os.path.getsize(out/'adapter_model.safetensors')
        assert read_adapter(out/ck)['training_base']['quant'] == '4bit'           # a checkpoint merges like the final adapter
        assert (out/ck/'trainer_state.json').exists() and (out/ck/'training_args.bin').exists()
