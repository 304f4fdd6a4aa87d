"""Property tests: random and mutated dataset files through `load_records` and `prepare_dataset`.

The only exceptions allowed are ft_nb's own (`RecordError`, or a `ValueError` raised in ft_nb) naming the file;
`errors='skip'` keeps exactly the good rows and places every bad one; no input file is ever changed.
FT_NB_FUZZ_EXAMPLES=<n> sets the examples of each property (CI runs the defaults: about 2,300 cases in all)."""
import csv, hashlib, io, json, os, tempfile, traceback, warnings
from pathlib import Path
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from ft_nb.data import RecordError, load_records, prepare_dataset

EXAMPLES = int(os.environ.get('FT_NB_FUZZ_EXAMPLES', 0))

def fuzz_settings(n:int):
    "Hypothesis settings for `n` examples (or FT_NB_FUZZ_EXAMPLES), no deadline, no example database."
    return settings(max_examples=EXAMPLES or n, deadline=None, database=None, derandomize=not EXAMPLES,
                    suppress_health_check=list(HealthCheck))

class Tally:
    "What a property saw, for the reliability figures."
    def __init__(self): self.tried = self.ours = self.foreign = self.modified = 0
    def record(self, reliability, what): reliability.fuzz(what, self.tried, self.ours, self.foreign, self.modified)

def snapshot(d:Path)->dict: return {p: (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in sorted(d.rglob('*')) if p.is_file()}

def ours(e:Exception, path:Path)->bool:
    "Whether `e` is ft_nb's own error, raised in ft_nb, naming the file."
    deepest = traceback.extract_tb(e.__traceback__)[-1].filename
    return type(e) in (RecordError, ValueError) and f'{os.sep}ft_nb{os.sep}' in deepest and path.name in str(e)

def run(tally:Tally, path:Path, f):
    "`f()` counted: an ft_nb error is returned, anything else counted as foreign and raised; a changed input file is counted and fails."
    before = snapshot(path.parent)
    tally.tried += 1
    try: out = f()
    except Exception as e:
        if not ours(e, path): tally.foreign += 1; raise
        tally.ours += 1; out = e
    if snapshot(path.parent) != before: tally.modified += 1; raise AssertionError(f'{path} was modified')
    return out

# ---- records: good ones, and mutations that are surely bad ------------------------------------------------------
ASCII = st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=12).filter(str.strip)
LATIN = st.text(st.sampled_from('abc XYZ.,é"ü\\ñ'), min_size=1, max_size=12).filter(str.strip)
ANY = st.text(st.characters(blacklist_categories=('Cs',)), min_size=1, max_size=16).filter(str.strip)
WRONG = st.sampled_from([5, 1.5, True, [1], {'k': 'v'}, ['x', 'y'], [[1, 2]]])
EMPTY = st.sampled_from(['', ' ', '\n\t'])

@st.composite
def alpaca(draw, text, good:bool):
    r = {'instruction': draw(text), 'input': draw(st.one_of(st.just(''), text)), 'output': draw(text)}
    if draw(st.booleans()): r['system'] = draw(text)
    if good: return r
    field = draw(st.sampled_from(['instruction', 'output', 'input', 'system', 'history']))
    how = draw(st.sampled_from(['wrong', 'empty', 'missing'] if field in ('instruction', 'output') else ['wrong']))
    if how == 'missing': del r[field]
    else: r[field] = draw(WRONG if how == 'wrong' else EMPTY)
    return r

def turns(draw, text, n, roles=('human', 'gpt')):
    return [{'from': roles[i % 2], 'value': draw(text)} for i in range(n)]

@st.composite
def sharegpt(draw, text, good:bool):
    n = draw(st.sampled_from([1, 2, 2, 4, 6, 500]))
    conv = turns(draw, text, n, ('gpt', 'human') if n == 1 else ('human', 'gpt'))
    if good: return {'conversations': conv}
    i = draw(st.integers(0, len(conv) - 1))
    bad = draw(st.sampled_from(['zero', 'user-only', 'role', 'role-type', 'value-type', 'value-empty', 'turn-type', 'conv-type', 'weight', 'all-weight-0']))
    if bad == 'zero': conv = []
    elif bad == 'user-only': conv = [{'from': 'human', 'value': draw(text)}]
    elif bad == 'role': conv[i]['from'] = draw(st.sampled_from(['robot', 'GPT-4', 'bot', '']))
    elif bad == 'role-type': conv[i]['from'] = draw(WRONG)
    elif bad == 'value-type': conv[i]['value'] = draw(WRONG)
    elif bad == 'value-empty': conv[i]['value'] = draw(EMPTY)
    elif bad == 'turn-type': conv[i] = draw(st.sampled_from([5, 'gpt', None, ['from', 'gpt']]))
    elif bad == 'conv-type': conv = draw(st.sampled_from([{'from': 'gpt', 'value': 'x'}, 'hello', 5, None]))
    elif bad == 'weight': conv[i]['weight'] = draw(st.sampled_from([2, -1, 0.5, 'yes']))
    else: conv = [{**t, 'weight': 0} if t['from'] == 'gpt' else t for t in conv]
    return {'conversations': conv}

@st.composite
def messages(draw, text, good:bool):
    n = draw(st.sampled_from([1, 2, 3, 4, 500]))
    msgs = [{'role': 'assistant' if (n - i) % 2 == 1 else 'user', 'content': draw(text)} for i in range(n)]  # ends with the assistant
    if good: return {'messages': msgs}
    i = draw(st.integers(0, n - 1))
    bad = draw(st.sampled_from(['zero', 'user-only', 'role', 'role-type', 'content-type', 'content-empty', 'msg-type']))
    if bad == 'zero': msgs = []
    elif bad == 'user-only': msgs = [{'role': 'user', 'content': draw(text)}]
    elif bad == 'role': msgs[i]['role'] = draw(st.sampled_from(['bot', 'human', 'Assistant', '']))
    elif bad == 'role-type': msgs[i]['role'] = draw(WRONG)
    elif bad == 'content-type': msgs[i]['content'] = draw(st.sampled_from([5, 1.5, True, {'k': 'v'}, [5], [{'type': 'image'}]]))
    elif bad == 'content-empty': msgs[i]['content'] = draw(EMPTY)
    else: msgs[i] = draw(st.sampled_from([5, 'user', None]))
    return {'messages': msgs}

MAKERS = {'alpaca': alpaca, 'sharegpt': sharegpt, 'messages': messages}

@st.composite
def dataset_file(draw):
    "(file name, bytes, [(uid, good, place)]) of a dataset file with good and bad records in one format and encoding."
    kind = draw(st.sampled_from(['jsonl', 'json', 'csv']))
    fmt = 'alpaca' if kind == 'csv' else draw(st.sampled_from(sorted(MAKERS)))
    enc = draw(st.sampled_from(['utf-8', 'utf-8-sig', 'utf-16', 'latin-1'] + (['utf-16-le', 'utf-16-be', 'utf-32'] if kind != 'csv' else [])))
    text = {'latin-1': LATIN, 'utf-8': ANY}.get(enc, draw(st.sampled_from([ASCII, ANY])))
    goods = draw(st.lists(st.booleans(), max_size=8))
    recs = [{'uid': i, **draw(MAKERS[fmt](text, g))} for i, g in enumerate(goods)]
    # A Latin-1 file: a record with a non-ASCII character in a field read as text has bytes that are not UTF-8.
    goods = [g and (enc != 'latin-1' or all(ord(c) < 128 for c in json.dumps(r, ensure_ascii=False))) for g, r in zip(goods, recs)]
    name, ea = f'data.{kind}', draw(st.booleans()) and enc != 'latin-1'
    if kind == 'jsonl':
        body = ''.join(json.dumps(r, ensure_ascii=ea) + '\n' for r in recs)
        places = [f'line {i + 1}' for i in range(len(recs))]
    elif kind == 'json':
        body = json.dumps(recs, ensure_ascii=ea, indent=draw(st.sampled_from([None, 1])))
        places = [f'record {i}' for i in range(len(recs))]
    else:
        cols = ['uid', 'instruction', 'input', 'output', 'system']
        out = io.StringIO(newline=''); w = csv.writer(out); w.writerow(cols); places = []
        for r in recs:
            places.append(f'line {len(io.StringIO(out.getvalue(), newline="").readlines()) + 1}')
            row = ['' if r.get(c) is None else r[c] if isinstance(r[c], str) else str(r[c]) if c == 'uid' else '' for c in cols]
            if draw(st.booleans()) and r.get('system') is None: row = row[:-1]  # a short row: the missing field is None
            w.writerow(row)
        body = out.getvalue()
        # In CSV every value is text: a wrong type written as '' is an empty field, bad only where the field is needed.
        goods = [g or not _csv_bad(r) for g, r in zip(goods, recs)]
        goods = [g and (enc != 'latin-1' or all(ord(c) < 128 for c in ''.join(str(v) for v in r.values()))) for g, r in zip(goods, recs)]
    return name, body.encode(enc), [(str(i), g, p) for i, (g, p) in enumerate(zip(goods, places))]

def _csv_bad(r:dict)->bool:
    "Whether an Alpaca record is bad once written to CSV (wrong types become empty fields)."
    return any(not (isinstance(r.get(k), str) and r[k].strip()) for k in ('instruction', 'output'))

TALLY = {k: Tally() for k in ('records', 'garbage', 'prepare')}

@fuzz_settings(1200)
@given(dataset_file(), st.sampled_from(['skip', 'raise']))
def test_good_and_bad_records(f, errors):
    "Exactly the good rows are kept, every bad one is placed (file and line or record), and only ft_nb's errors are raised."
    name, data, expect = f
    with tempfile.TemporaryDirectory() as d:
        path = Path(d)/name
        path.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            out = run(TALLY['records'], path, lambda: load_records(path, errors=errors))
        good = [u for u, g, _ in expect if g]
        bad = [f'{path} {p}' for _, g, p in expect if not g]
        if errors == 'raise' and bad:
            assert isinstance(out, RecordError) and out.where == bad[0], (out, bad[0])
        elif not good:  # no records at all: nothing usable, or (JSON Lines) not even one line
            assert isinstance(out, ValueError) and ('no usable records' in str(out) or out.where == str(path)), out
        else:
            assert not isinstance(out, Exception), out
            ds = out[0] if errors == 'skip' else out
            assert [str(u) for u in ds['uid']] == good
            if errors == 'skip': assert [b.where for b in out[1]] == bad, ([str(b) for b in out[1]], bad)

# ---- garbage: random bytes and mutations of good files ----------------------------------------------------------
def _parquet_bytes(recs):
    import pyarrow as pa, pyarrow.parquet as pq
    buf = io.BytesIO(); pq.write_table(pa.Table.from_pylist(recs), buf); return buf.getvalue()

GOOD = [{'instruction': 'Add 2 and 2', 'input': '', 'output': '4'}, {'instruction': 'Name a colour', 'input': 'warm', 'output': 'Red'}]
SEEDS = [('.jsonl', '\n'.join(json.dumps(r) for r in GOOD).encode()), ('.json', json.dumps(GOOD, indent=1).encode()),
         ('.csv', b'instruction,input,output\r\n"Add, then ""say"" it",,4\r\n"Two\nlines",x,Red\r\n'), ('.parquet', _parquet_bytes(GOOD)),
         ('.json', json.dumps({'data': [{'conversations': [{'from': 'human', 'value': 'Hi'}, {'from': 'gpt', 'value': 'Yo'}]}]}).encode())]

@st.composite
def garbage(draw):
    "(suffix, bytes): a good file truncated, with bytes flipped, inserted or deleted, re-encoded, or plain random bytes."
    suffix, seed = draw(st.sampled_from(SEEDS))
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(['truncate', 'flip', 'insert', 'delete', 'random', 'bom', 'utf16', 'nest', 'empty', 'nul']))
        n = len(data)
        at = draw(st.integers(0, n))
        if op == 'truncate': data = data[:at]
        elif op == 'flip' and n: data[min(at, n - 1)] = draw(st.integers(0, 255))
        elif op == 'insert': data[at:at] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b'"', b'\\', b'\n', b'{', b'[', b',', b'\r', b'\xff\xfe', b'\xc3', b'\\ud800']))
        elif op == 'delete': del data[at:at + draw(st.integers(1, 8))]
        elif op == 'random': data = bytearray(draw(st.binary(max_size=200)))
        elif op == 'bom': data = bytearray(draw(st.sampled_from([b'\xef\xbb\xbf', b'\xff\xfe', b'\xfe\xff', b'\xff\xfe\x00\x00'])) + data)
        elif op == 'utf16': data = bytearray(bytes(data).decode('utf-8', 'replace').encode(draw(st.sampled_from(['utf-16', 'utf-16-le', 'utf-32']))))
        elif op == 'nest': data = bytearray(b'[' * draw(st.sampled_from([50, 5000, 200000])) + data)
        elif op == 'empty': data = bytearray(draw(st.sampled_from([b'', b'\n', b' \r\n ', b'[]', b'{}', b'null', b'"text"'])))
        elif op == 'nul': data[at:at] = b'\x00' * draw(st.integers(1, 3))
    return suffix, bytes(data)

@fuzz_settings(1000)
@given(garbage(), st.sampled_from(['skip', 'raise']))
def test_garbage_files(f, errors):
    "Broken files of every kind: a dataset of good rows, or ft_nb's own error naming the file; skipped records each placed in it."
    suffix, data = f
    with tempfile.TemporaryDirectory() as d:
        path = Path(d)/f'data{suffix}'
        path.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            out = run(TALLY['garbage'], path, lambda: load_records(path, errors=errors))
        if isinstance(out, Exception): return
        ds, bad = out if errors == 'skip' else (out, [])
        assert len(ds) >= 1 and all(any(m['role'] == 'assistant' for m in ms) for ms in ds['messages'])
        assert all(str(path) in b.where for b in bad), [b.where for b in bad]

# ---- through the tokenizer ---------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def smol():
    from conftest import load_tok
    return load_tok('smollm2')

@fuzz_settings(20)
@given(dataset_file())
def test_prepare_counts(smol, f):
    "prepare_dataset with errors='skip': rows in = good + bad, rows out = good, every bad one placed."
    name, data, expect = f
    good, bad = sum(g for _, g, _ in expect), sum(not g for _, g, _ in expect)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d)/'in'/name
        path.parent.mkdir(); path.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            out = run(TALLY['prepare'], path, lambda: prepare_dataset(path, smol, errors='skip', cache_dir=Path(d)/'cache'))
        if not good: assert isinstance(out, ValueError) and 'no usable records' in str(out); return
        ds, rep = out
        assert (rep.rows_in, rep.rows_out, len(ds), len(rep.bad)) == (good + bad, good, good, bad)

@pytest.mark.parametrize('what', sorted(TALLY))
def test_figures(what, reliability):
    "The counts of each property above, for the reliability table (runs after them, in file order)."
    t = TALLY[what]
    if not t.tried: pytest.skip(f'the {what} property did not run in this session')
    assert t.foreign == 0 and t.modified == 0
    t.record(reliability, {'records': 'dataset files of good and bad records (JSON, JSONL, CSV; UTF-8, BOM, UTF-16/32, Latin-1)',
                           'garbage': 'truncated, mutated, re-encoded and random files (JSON, JSONL, CSV, Parquet)',
                           'prepare': 'prepare_dataset on files of good and bad records'}[what])

# ---- huge lines --------------------------------------------------------------------------------------------------
def test_huge_lines(tmp_path, reliability):
    "A 50 MB single line: read when it is good, placed when it is not, in JSON Lines and CSV alike."
    t, big = Tally(), 'x' * 50_000_000
    (tmp_path/'big.jsonl').write_text(json.dumps({'instruction': 'Repeat', 'output': big}) + '\n{"instruction": "a", "output": "b"}\n')
    (tmp_path/'bad.jsonl').write_text('{"instruction": "a", "output": "b"}\n{"instruction": "Repeat", "output": "' + big + '\n')
    (tmp_path/'big.csv').write_text(f'instruction,output\nRepeat,"{big}"\na,b\n')
    (tmp_path/'unclosed.csv').write_text(f'instruction,output\na,b\nRepeat,"{big}\n')
    ds = run(t, tmp_path/'big.jsonl', lambda: load_records(tmp_path/'big.jsonl'))
    assert len(ds) == 2 and len(ds[0]['output']) == 50_000_000
    ds, bad = run(t, tmp_path/'bad.jsonl', lambda: load_records(tmp_path/'bad.jsonl', errors='skip'))
    assert len(ds) == 1 and [b.where for b in bad] == [f"{tmp_path/'bad.jsonl'} line 2"] and len(str(bad[0])) < 500
    ds = run(t, tmp_path/'big.csv', lambda: load_records(tmp_path/'big.csv'))
    assert len(ds) == 2 and len(ds[0]['output']) == 50_000_000
    out = run(t, tmp_path/'unclosed.csv', lambda: load_records(tmp_path/'unclosed.csv', errors='skip'))
    assert not isinstance(out, Exception) and len(out[0]) == 1, out
    assert t.foreign == 0
    t.record(reliability, '50 MB single lines (JSON Lines, CSV)')
