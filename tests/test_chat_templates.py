"""Real chat templates (tests/chat_templates/*.json, the tokenizers' own in ../shared/data, and the built-ins): ids equal
`apply_chat_template`'s, and the labels are exactly each assistant content with its end-of-turn text, plus what the template
writes to end the conversation when it ends with the assistant; refused, with the reason, only where a content is not rendered verbatim."""
import json, re, warnings
from pathlib import Path
import pytest
from ft_nb.data import tokenize_chat, turn_end, TEMPLATES
from conftest import load_tok

FIXTURES = {p.stem: json.loads(p.read_text()) for p in sorted((Path(__file__).parent/'chat_templates').glob('*.json'))}
BUILTINS = {'chatml': {'end': '<|im_end|>'}, 'llama2': {'lead': ' ', 'end': ' </s>'}, 'llama3': {'end': '<|eot_id|>'},
            'mistral': {'lead': ' ', 'end': '</s>'}, 'zephyr': {'end': '</s>'}, 'alpaca': {'end': '</s>'}}
OWN = {'qwen2.5': {'end': '<|im_end|>'}, 'mistral-7b-instruct-v0.3': {'lead': ' ', 'end': '</s>'}}  # the tokenizers' own templates
CASES = sorted(FIXTURES) + [f'builtin:{n}' for n in BUILTINS] + [f'own:{n}' for n in OWN]

S, U1, A1, U2, A2, U3 = 'Answer briefly.', 'What is 2+2?', 'It is 4.', 'And in words?', 'Four, spelled out.', 'Thanks!'
CONVS = {'system, two turns': [('system', S), ('user', U1), ('assistant', A1), ('user', U2), ('assistant', A2)],
         'two turns': [('user', U1), ('assistant', A1), ('user', U2), ('assistant', A2)],
         'one turn': [('user', U1), ('assistant', A1)],
         'ends with the user': [('user', U1), ('assistant', A1), ('user', U2), ('assistant', A2), ('user', U3)]}
CONVS = {k: [{'role': r, 'content': c} for r, c in v] for k, v in CONVS.items()}

def markers(tpl:str)->list[str]: return sorted(set(re.findall(r"<[^<>\s'\"+~{}]{2,40}>", tpl)))

def case_tok(case):
    "A tokenizer rendering with the case's template, its markers, BOS and EOS made single special tokens; and what to expect."
    kind, _, name = case.rpartition(':')
    if kind == 'own':
        tok = load_tok(name)
        return tok, OWN[name]
    tok = load_tok('qwen2.5')
    fx = FIXTURES[name] if not kind else {'chat_template': TEMPLATES[name], 'bos_token': '<s>', 'eos_token': '</s>', 'expect': BUILTINS[name]}
    tok.add_tokens(markers(fx['chat_template']) + fx.get('tokens', []), special_tokens=True)
    tok.add_special_tokens({'bos_token': fx['bos_token'], 'eos_token': fx['eos_token']})
    tok.chat_template = fx['chat_template']
    return tok, fx['expect']

def oracle_labels(tok, msgs, rendered, exp):
    "Labels from the expected texts: each content as written, the template's lead and end around it, found in order."
    enc = tok(rendered, add_special_tokens=False, return_offsets_mapping=True)
    spans, pos = [], 0
    for i, m in enumerate(msgs):
        if m['role'] != 'assistant': continue
        final = i == len(msgs) - 1
        lead, end = (exp.get('final_lead', exp.get('lead', '')), exp.get('final_end', exp['end'])) if final else (exp.get('lead', ''), exp['end'])
        a = rendered.index(m['content'], pos); b = a + len(m['content'])
        assert rendered[a - len(lead):a] == lead and rendered.startswith(end, b), (rendered[a-20:b+30], lead, end)
        spans.append((a - len(lead), b + len(end))); pos = b + len(end)
    return [i if any(s < b and e > a for a, b in spans) else -100 for i, (s, e) in zip(enc['input_ids'], enc['offset_mapping'])]

def run_case(case):
    "'pass', or 'refused: <reason>'; an AssertionError where ids or labels differ."
    tok, exp = case_tok(case)
    used = 0
    for cname, msgs in CONVS.items():
        try: rendered = tok.apply_chat_template(msgs, tokenize=False)
        except Exception: continue  # a role order the template itself rejects (Gemma: no system role)
        used += 1
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            try: ex = tokenize_chat(msgs, tok)
            except ValueError as e: return f'refused: {e}'
        assert ex['input_ids'] == tok.apply_chat_template(msgs, tokenize=True)['input_ids'], (case, cname)
        assert ex['labels'] == oracle_labels(tok, msgs, rendered, exp), (case, cname, tok.decode([i for i in ex['labels'] if i != -100]))
    assert used >= 2, f'{case}: the template rejects the test conversations'
    return 'pass'

@pytest.fixture(scope='module')
def results():
    out = {}
    for c in CASES:
        try: out[c] = run_case(c)
        except Exception as e: out[c] = f'wrong: {type(e).__name__}: {e}'
    return out

@pytest.mark.parametrize('case', CASES)
def test_template(case, results):
    refuse = FIXTURES.get(case, {}).get('expect', {}).get('refuse')
    if refuse: assert results[case].startswith('refused') and refuse in results[case], results[case]
    else: assert results[case] == 'pass', results[case]

def test_pass_rate(results, capsys):
    ok = [c for c in CASES if results[c] == 'pass' or (results[c].startswith('refused') and FIXTURES.get(c, {}).get('expect', {}).get('refuse'))]
    with capsys.disabled(): print(f'\nchat templates: {len(ok)}/{len(CASES)} exact or refused for a content not rendered verbatim '
                                  f'({len(ok)/len(CASES):.0%}); ' + ', '.join(f'{c}: {r[:60]}' for c, r in results.items() if r != 'pass'))
    assert len(CASES) >= 30 and len(ok) / len(CASES) >= 0.97

def test_trailing_eos_is_the_stop_signal_too():
    "Phi-3's `<|endoftext|>` after the last turn is trained, but the end of a turn (and generation's stop token) is `<|end|>`."
    tok, _ = case_tok('phi-3.5-mini-instruct')
    assert turn_end(tok) == '<|end|>'
    ex = tokenize_chat(CONVS['two turns'], tok)
    assert tok.decode([i for i, l in zip(ex['input_ids'], ex['labels']) if l != -100]).endswith('<|end|>\n<|endoftext|>')

def test_qwen3_reasoning():
    "Qwen3 drops the reasoning of earlier turns: refused, naming the turn; reasoning in the last turn, as the template writes it, is trained."
    tok, exp = case_tok('qwen3')
    think = [{'role': 'user', 'content': U1}, {'role': 'assistant', 'content': '<think>Add.</think>It is 4.'}, {'role': 'user', 'content': U2}, {'role': 'assistant', 'content': A2}]
    with pytest.raises(ValueError, match=r'assistant turn 0 \(message 1\) is not rendered verbatim by the chat template'): tokenize_chat(think, tok)
    last = think[:1] + [{'role': 'assistant', 'content': '<think>\nAdd.\n</think>\n\nIt is 4.'}]
    ex = tokenize_chat(last, tok)
    assert ex['input_ids'] == tok.apply_chat_template(last, tokenize=True)['input_ids']
    assert ex['labels'] == oracle_labels(tok, last, tok.apply_chat_template(last, tokenize=False), {**exp, 'final_lead': ''})
