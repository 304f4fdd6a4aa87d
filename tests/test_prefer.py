"""Preference tuning (ft_nb.prefer) beyond the notebook's tests: exact reply tokens on every chat template the SFT layer
is tested on, data read the way other tools write it, `ft_nb train` with `method: dpo` and `ft_nb merge` of its adapter,
resume and QLoRA (the preference demo is run from the wheel: tests/test_wheel.py)."""
import json, math, shutil, subprocess, sys, warnings
from pathlib import Path
import pytest
from ft_nb.data import RecordError, ColumnMap
from ft_nb.prefer import prepare_preferences, to_preference, tokenize_preference, prefer
from ft_nb.testing import tiny_llama
from test_chat_templates import CASES, FIXTURES, case_tok

FIX = Path(__file__).parent/'fixtures'/'other_tools'
S, U1, A1, U2 = 'Answer briefly.', 'What is 2+2?', 'It is 4.', 'And in words?'
PAIR = {'chosen': [{'role': 'system', 'content': S}, {'role': 'user', 'content': U1}, {'role': 'assistant', 'content': A1}, {'role': 'user', 'content': U2},
                   {'role': 'assistant', 'content': 'Four.'}]}
PAIR['rejected'] = PAIR['chosen'][:-1] + [{'role': 'assistant', 'content': 'Five, I think.'}]

def exact_case(case):
    "'pass', 'refused: ...' where the SFT layer refuses the template; an AssertionError where the tokens are not apply_chat_template's."
    tok, _ = case_tok(case)
    for pair in (PAIR, {k: v[1:] for k, v in PAIR.items()}):   # with a system message, and without (some templates have no system role)
        try: tok.apply_chat_template(pair['chosen'], tokenize=False)
        except Exception: continue
        ex = to_preference(pair)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            try: t = tokenize_preference(ex, tok)
            except (RecordError, ValueError) as e: return f'refused: {e}'
        for side in ('chosen', 'rejected'):
            full = tok.apply_chat_template(ex['prompt'] + ex[side], tokenize=True, return_dict=True)['input_ids']
            n = len(t['prompt_ids']) + len(t[f'{side}_ids'])
            assert full[:n] == t['prompt_ids'] + t[f'{side}_ids'], (case, side)
            assert ex[side][0]['content'] in tok.decode(t[f'{side}_ids']), (case, tok.decode(t[f'{side}_ids']))
            assert tok.decode(full[n:]).strip() == '' or full[n:] == [tok.eos_token_id], (case, tok.decode(full[n:]))   # after the end-of-turn: whitespace, or EOS
        return 'pass'
    return 'no conversation the template renders'

@pytest.fixture(scope='module')
def results():
    out = {}
    for c in CASES:
        try: out[c] = exact_case(c)
        except Exception as e: out[c] = f'wrong: {type(e).__name__}: {e}'
    return out

def test_every_template(results, capsys):
    "Each template: exact, or refused for the reason the SFT layer refuses it (a content it does not render verbatim)."
    wrong = {c: r for c, r in results.items() if r != 'pass' and not (r.startswith('refused') and FIXTURES.get(c, {}).get('expect', {}).get('refuse'))}
    with capsys.disabled(): print(f"\npreference pairs: {sum(r == 'pass' for r in results.values())}/{len(results)} templates exact; others: {wrong}")
    assert len(wrong) <= 0.03 * len(results), wrong

def test_llamafactory_dataset_info_entry(tmp_path):
    "A ranking entry of LLaMA-Factory's dataset_info.json reads its dpo_en_demo file through `columns`."
    info = json.loads((FIX/'llamafactory_dataset_info_excerpt.json').read_text())
    (tmp_path/'dpo_en_demo.json').write_text((FIX/'llamafactory_dpo_en_demo_excerpt.json').read_text())
    tok, _ = case_tok('own:qwen2.5')
    ds, rep = prepare_preferences(tmp_path/'dpo_en_demo.json', tok, columns=info['dpo_en_demo'])
    assert (rep.kind, rep.rows_out) == ('pairs', 1)
    raw = json.loads((FIX/'llamafactory_dpo_en_demo_excerpt.json').read_text())[0]
    assert tok.decode(ds[0]['chosen_ids']).startswith(raw['chosen']['value'][:40])

def test_bad_line_is_named(tmp_path):
    "A JSONL file with a broken line: the error names the file and the line; errors='skip' keeps the good rows and reports the bad one."
    f = tmp_path/'pairs.jsonl'
    good = {'prompt': 'What is 2+2?', 'chosen': '4', 'rejected': '5'}
    f.write_text(json.dumps(good) + '\n{"prompt": "x", "chosen": \n' + json.dumps({**good, 'chosen': ['not', 'a', 'turn']}) + '\n' + json.dumps(good) + '\n')
    tok, _ = case_tok('own:qwen2.5')
    with pytest.raises(RecordError, match=r'pairs\.jsonl line 2'): prepare_preferences(f, tok)
    ds, rep = prepare_preferences(f, tok, errors='skip')
    assert (rep.rows_out, len(rep.bad)) == (2, 2)
    assert [str(e).split(':')[0] for e in rep.bad] == [f'{f} line 2', f'{f} line 3']

def run(*args, cwd, timeout=900):
    r = subprocess.run([shutil.which('ft_nb'), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r

@pytest.mark.slow
def test_cli_dpo_then_merge(tmp_path):
    "`ft_nb train` with `method: dpo` from YAML on a 4-bit base, then `ft_nb merge` of the DPO adapter: verified like any other."
    base = tiny_llama(folder=tmp_path/'base', hidden_size=64)
    pairs = [{'prompt': f'What is {i} plus {i}?', 'chosen': f'{i} plus {i} is {2 * i}.', 'rejected': f'{2 * i + 1}'} for i in range(16)]
    (tmp_path/'pairs.jsonl').write_text(''.join(json.dumps(p) + '\n' for p in pairs))
    (tmp_path/'dpo.yaml').write_text(f"model: {base}\ndata: pairs.jsonl\nmethod: dpo\nbeta: 0.1\noutput_dir: out\nprogress: none\nmax_steps: 3\n"
                                     "per_device_train_batch_size: 4\ngradient_accumulation_steps: 1\nlearning_rate: 0.005\nsave_strategy: 'no'\n")
    r = run('train', 'dpo.yaml', cwd=tmp_path)
    m = json.loads(r.stdout[r.stdout.index('{'):])
    assert (m['method'], m['steps']) == ('dpo', 3) and math.isfinite(m['train_loss'])
    assert json.loads((tmp_path/'out'/'ft_nb_base.json').read_text())['quant'] == '4bit'
    r = run('merge', 'out', '--out', 'merged', cwd=tmp_path)
    rep = json.loads((tmp_path/'merged'/'merge_report.json').read_text())
    assert rep['mode'] == 'nf4' and rep['adapter_effect'] > 0, rep
    card = (tmp_path/'merged'/'README.md').read_text()             # the merged model's card: the DPO adapter's facts and the merge's figures
    assert '| method | dpo |' in card and '| beta | 0.1 |' in card and f"| KL | {rep['kl']:.4g} |" in card and '| mode | nf4 |' in card

@pytest.mark.slow
def test_resume(tmp_path):
    "A DPO run stopped after its checkpoint at step 2 resumes there and ends with the adapter an uninterrupted run ends with."
    from ft_nb.models import load_model
    folder = tiny_llama(folder=tmp_path/'base')
    pairs = [{'prompt': f'What is {i} plus {i}?', 'chosen': f'{i} plus {i} is {2 * i}.', 'rejected': f'{2 * i + 1}'} for i in range(16)]
    kw = dict(adapter='lora', progress='none', max_steps=4, per_device_train_batch_size=4, gradient_accumulation_steps=1, learning_rate=5e-3,
              save_strategy='steps', save_steps=2, seed=0)
    whole = prefer(*load_model(folder, quant=None), pairs, output_dir=tmp_path/'whole', **kw)
    from transformers import TrainerCallback
    class StopAt2(TrainerCallback):   # the run is cut short after step 2 (as a kill would), its schedule the whole run's
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2: control.should_training_stop = True
    part = prefer(*load_model(folder, quant=None), pairs, output_dir=tmp_path/'part', callbacks=[StopAt2()], **kw)
    assert (tmp_path/'part'/'checkpoint-2').is_dir()
    res = prefer(*load_model(folder, quant=None), pairs, output_dir=tmp_path/'part', resume_from_checkpoint=True, **kw)
    assert (part.steps, res.steps) == (2, 4)
    from safetensors.torch import load_file
    a, b = load_file(tmp_path/'whole'/'adapter_model.safetensors'), load_file(tmp_path/'part'/'adapter_model.safetensors')
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4

@pytest.mark.slow
def test_qlora_dpo_keeps_fp32_adapter(tmp_path):
    "On a 4-bit base TRL casts the adapter to bf16; ft_nb keeps PEFT's fp32 (bf16 updates of a small adapter round away), and training moves it."
    from ft_nb.models import load_model
    folder = tiny_llama(folder=tmp_path/'base')
    pairs = [{'prompt': f'What is {i} plus {i}?', 'chosen': f'{i} plus {i} is {2 * i}.', 'rejected': f'{2 * i + 1}'} for i in range(8)]
    model, tok = load_model(folder)
    res = prefer(model, tok, pairs, output_dir=tmp_path/'out', adapter='qlora', progress='none', max_steps=2, per_device_train_batch_size=4,
                 gradient_accumulation_steps=1, learning_rate=5e-3, save_strategy='no')
    from safetensors.torch import load_file
    w = load_file(tmp_path/'out'/'adapter_model.safetensors')
    assert {t.dtype for t in w.values()} == {__import__('torch').float32}
    assert any(t.abs().max() > 0 for k, t in w.items() if 'lora_B' in k)
    assert res.steps == 2 and math.isfinite(res.train_loss)
