import json, os
from pathlib import Path
import pytest

# Under pytest-xdist, one process per core: each gets one thread (torch's OpenMP, the Rust tokenizer's and BLAS's, and
# those of the processes a test starts), else every worker starts one thread per core and they spin against each other.
if os.environ.get('PYTEST_XDIST_WORKER'):
    for v in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'RAYON_NUM_THREADS'): os.environ.setdefault(v, '1')
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


# The reliability figures (README's Reliability section): every fault and fuzz test records what it did through the
# `reliability` fixture; at the end of the session the totals go to tests/artifacts/reliability.json and .md.
RELIABILITY = []

@pytest.fixture
def reliability(request):
    "Record faults injected and survived, fuzzed inputs and their errors, files modified by failed runs, pickles executed."
    class Recorder:
        def fault(self, what:str, survived:bool, files_lost:int=0):
            "One injected fault: whether ft_nb came through it with a clear message, and how many saved files it lost or left half-written."
            RELIABILITY.append(dict(test=request.node.nodeid, kind='fault', what=what, survived=bool(survived), files_lost=files_lost))
        def fuzz(self, what:str, tried:int, ft_nb_errors:int, foreign:int, files_modified:int=0):
            "A fuzz run: inputs tried, ft_nb's own errors among them, tracebacks from other code (must be 0), input files changed (must be 0)."
            RELIABILITY.append(dict(test=request.node.nodeid, kind='fuzz', what=what, tried=tried, ft_nb_errors=ft_nb_errors, foreign=foreign, files_modified=files_modified))
        def pickle(self, what:str, executed:bool):
            "A crafted pickle put where ft_nb reads one: whether its code ran (must never)."
            RELIABILITY.append(dict(test=request.node.nodeid, kind='pickle', what=what, executed=bool(executed)))
        def modified(self, what:str, n:int):
            "Files of the user's changed by a failed run (must be 0)."
            RELIABILITY.append(dict(test=request.node.nodeid, kind='modified', what=what, files_modified=n))
    return Recorder()

def reliability_table(rows:list)->str:
    "The README table of the reliability figures."
    f = [r for r in rows if r['kind'] == 'fault']
    z = [r for r in rows if r['kind'] == 'fuzz']
    p = [r for r in rows if r['kind'] == 'pickle']
    mod = sum(r.get('files_modified', 0) for r in rows if r['kind'] in ('fuzz', 'modified'))
    return '\n'.join(['| figure | value |', '|---|---|',
        f"| faults injected / survived with nothing lost | {len(f)} / {sum(r['survived'] and not r['files_lost'] for r in f)} |",
        f"| fuzzed inputs tried / ft_nb errors / foreign tracebacks | {sum(r['tried'] for r in z):,} / {sum(r['ft_nb_errors'] for r in z):,} / {sum(r['foreign'] for r in z)} |",
        f"| files modified by a failed run | {mod} |",
        f"| pickles executed / crafted pickles tried | {sum(r['executed'] for r in p)} / {len(p)} |"])

def _worker(config)->str|None: return getattr(config, 'workerinput', {}).get('workerid')   # pytest-xdist's worker id; None in the main process

def pytest_sessionstart(session):
    if _worker(session.config) is None:
        for p in (Path(__file__).parent/'artifacts').glob('.reliability-*.json'): p.unlink()   # a killed run's

def pytest_sessionfinish(session, exitstatus):
    "The totals, over every worker's records when pytest-xdist runs the tests in several processes."
    out = Path(__file__).parent/'artifacts'
    out.mkdir(exist_ok=True)
    if (w := _worker(session.config)) is not None:
        if RELIABILITY: (out/f'.reliability-{w}.json').write_text(json.dumps(RELIABILITY))
        return
    parts = sorted(out.glob('.reliability-*.json'))
    rows = RELIABILITY + [r for p in parts for r in json.loads(p.read_text())]
    for p in parts: p.unlink()
    if not rows: return
    (out/'reliability.json').write_text(json.dumps(sorted(rows, key=lambda r: r['test']), indent=1))
    (out/'reliability.md').write_text(reliability_table(rows) + '\n')
