import warnings
from pathlib import Path
import pytest

DATA = Path(__file__).resolve().parents[1].parent/'shared'/'data'
TOKENIZERS = ['gpt2', 'smollm2', 'mistral-7b-instruct-v0.3', 'qwen2.5']

def pytest_configure(config):
    warnings.filterwarnings('ignore', message='added .* to the tokenizer')

@pytest.fixture(scope='session')
def data_dir():
    if not DATA.exists(): pytest.fail(f'test data not found at {DATA}: the shared data folder must sit beside the repository')
    return DATA

def load_tok(name):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(DATA/'tokenizers'/name)

def plain(msgs):
    "Messages without the null keys Arrow adds to structs."
    return [{k: v for k, v in m.items() if v is not None} for m in msgs]

def check_trained(tok, msgs, ex, end):
    """Each run of trained tokens decodes to one assistant content (as written or trimmed) followed by the end of turn.
    The run's first token may also carry a few characters of the template before the content, where the tokenizer
    merges them into one token (`:"` after Alpaca's `### Response:`): that token is the model's first output, so it is trained."""
    from ft_nb.data import trained_runs
    runs = trained_runs(ex)
    contents = [m['content'] for m in msgs if m['role'] == 'assistant']
    assert len(runs) == len(contents), ([tok.decode(r) for r in runs], contents)
    for run, c in zip(runs, contents):
        text = tok.decode(run).strip()
        ok = [a for a in dict.fromkeys(((c + end).strip(), (c.strip() + end).strip())) if text.endswith(a)]
        assert ok, (text, c, end)
        extra = text[:len(text) - len(ok[0])]
        assert not extra or extra in tok.decode(run[:1]), (extra, tok.decode(run[:1]))

def tiny_llama(folder=None, tok_name='smollm2'):
    "A 2-layer Llama (hidden 64, untied head) with a real tokenizer, saved like a downloaded checkpoint; its folder."
    import tempfile, torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    tok, folder = load_tok(tok_name), folder or tempfile.mkdtemp()
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder

def mid_llama(dtype=None):
    "A 113M-parameter Llama with SmolLM2's tokenizer, saved like a downloaded checkpoint (in `dtype` if given); (folder, parameters)."
    import tempfile, torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    tok = load_tok('smollm2')
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                      num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=True)
    torch.manual_seed(0)
    model, path = AutoModelForCausalLM.from_config(cfg), tempfile.mkdtemp()
    (model.to(dtype) if dtype else model).save_pretrained(path)
    tok.save_pretrained(path)
    return path, sum(p.numel() for p in model.parameters())
