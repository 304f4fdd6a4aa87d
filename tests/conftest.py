import pytest
from ft_nb.testing import load_tok, quiet, shared_data  # load_tok: the tests import it from here

DATA = shared_data()
TOKENIZERS = ['gpt2', 'smollm2', 'mistral-7b-instruct-v0.3', 'qwen2.5']

def pytest_configure(config): quiet()

@pytest.fixture(scope='session')
def data_dir():
    if not DATA.exists(): pytest.fail(f'test data not found at {DATA}: the shared data folder must sit beside the repository')
    return DATA

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
