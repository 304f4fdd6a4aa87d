"Loading, adapters and generation on tiny models of six architectures, built from configs and loaded like a hub name."
import json
import pytest, torch
from transformers import LlamaConfig, Qwen2Config, MistralConfig, GemmaConfig, Phi3Config, GPT2Config
from ft_nb.models import load_model, linear_layers
from ft_nb.methods import apply_method, trainable_report
from ft_nb.testing import tiny_model


BASE = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
ARCHS = {'llama': (LlamaConfig, BASE), 'qwen2': (Qwen2Config, BASE), 'mistral': (MistralConfig, BASE),
         'gemma': (GemmaConfig, {**BASE, 'head_dim': 64}), 'phi3': (Phi3Config, {**BASE, 'num_key_value_heads': 2, 'pad_token_id': 0}),
         'gpt2': (GPT2Config, dict(n_embd=128, n_layer=2, n_head=2, n_positions=256))}

def save_tiny(cfg_cls, kw): return tiny_model(cfg_cls, **kw)

@pytest.mark.parametrize('arch', list(ARCHS))
@pytest.mark.parametrize('quant', ['4bit', None])
def test_architecture_trains_and_generates(arch, quant):
    cls, kw = ARCHS[arch]
    model, tok = load_model(save_tiny(cls, kw), quant=quant)
    groups = set(linear_layers(model).values())
    assert {'attention', 'mlp'} <= groups, groups
    model = apply_method(model, 'qlora' if quant else 'lora', gradient_checkpointing=True)
    rep = trainable_report(model)
    assert 0 < rep.percent < 10
    x = torch.randint(0, len(tok), (2, 24), generator=torch.Generator().manual_seed(0))
    loss = model(input_ids=x, attention_mask=torch.ones_like(x), labels=x).loss
    loss.backward()
    assert torch.isfinite(loss)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    model.eval()
    prompt = tok.apply_chat_template([{'role': 'user', 'content': 'Hi'}], add_generation_prompt=True, return_tensors='pt')
    with torch.no_grad(): out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] <= prompt['input_ids'].shape[1] + 4
    assert tok.convert_tokens_to_ids('<|im_end|>') in model.generation_config.eos_token_id

def test_eight_bit_loads_or_says_why():
    cls, kw = ARCHS['llama']
    try: model, _ = load_model(save_tiny(cls, kw), quant='8bit')
    except Exception as e: pytest.skip(f'8-bit bitsandbytes on this machine: {type(e).__name__}: {e}')
    assert getattr(model, 'is_loaded_in_8bit', False)

def test_remote_code_is_not_run_unless_asked(tmp_path):
    "A folder whose config needs custom code: refused without trust_remote_code, and the code never runs."
    marker = tmp_path/'ran'
    (tmp_path/'config.json').write_text(json.dumps({'model_type': 'evil', 'auto_map': {'AutoConfig': 'configuration_evil.EvilConfig'}}))
    (tmp_path/'configuration_evil.py').write_text(f'open({str(marker)!r}, "w").write("x")\nfrom transformers import PretrainedConfig\nclass EvilConfig(PretrainedConfig): model_type = "evil"\n')
    with pytest.raises(Exception, match='trust_remote_code'): load_model(tmp_path)
    assert not marker.exists()
