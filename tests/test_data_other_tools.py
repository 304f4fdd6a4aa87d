"""Datasets written by other tools (Axolotl, LLaMA-Factory, OpenAI's format) and tool-calling templates, on real material.
Where each fixture comes from, and its licence: tests/fixtures/other_tools/README.md."""
import json
from pathlib import Path
import pytest
from ft_nb.data import (load_records, prepare_dataset, tokenize_chat, trained_text, fix_tokenizer, RecordError, to_tools, TEMPLATES)
from conftest import load_tok, plain

FIX = Path(__file__).parent/'fixtures'/'other_tools'
INFO = json.loads((FIX/'llamafactory_dataset_info_excerpt.json').read_text())

def chat(row):
    "Messages and tools of a loaded row, as `prepare_dataset` renders them."
    msgs = [{k: (json.loads(v) if k == 'tool_calls' else v) for k, v in m.items() if v is not None} for m in row['messages']]
    return msgs, json.loads(row['tools']) if row.get('tools') else None

def hf(msgs): return [{k: v for k, v in m.items() if k != 'train'} for m in msgs]

@pytest.fixture(scope='module')
def qwen(): return load_tok('qwen2.5')

def test_pretty_printed_single_object(qwen, tmp_path):
    "Axolotl's fixture is one pretty-printed object: one record, never 'malformed JSON'."
    src = json.loads((FIX/'axolotl_conversation.json').read_text())
    ds = load_records(FIX/'axolotl_conversation.json')
    assert len(ds) == 1 and [m['content'] for m in ds[0]['messages']] == [t['value'] for t in src['conversations']]
    out, rep = prepare_dataset(FIX/'axolotl_conversation.json', qwen, cache_dir=tmp_path)
    assert rep.rows_out == 1 and out[0]['input_ids'] == qwen.apply_chat_template(plain(ds[0]['messages']))['input_ids']
    with pytest.raises(RecordError, match=r'axolotl_conversation.json \(one object: one record\): field .conversations\[1\].value.: empty text'):
        bad = tmp_path/'axolotl_conversation.json'
        bad.write_text((FIX/'axolotl_conversation.json').read_text().replace(src['conversations'][1]['value'], ''))
        load_records(bad)

def test_llamafactory_v1_messages(qwen, tmp_path):
    "v1 content parts ({'type': 'text', 'value': ...}), loss_weight 0 on the tool call, a tool_call part and record-level tools."
    ds = load_records(FIX/'llamafactory_v1_messages.jsonl')
    assert plain(ds[0]['messages']) == [{'role': 'system', 'content': 'You are a helpful assistant.'}, {'role': 'user', 'content': 'Hello, who are you?'},
                                        {'role': 'assistant', 'content': 'I am an AI assistant.'}]
    out, rep = prepare_dataset(FIX/'llamafactory_v1_messages.jsonl', qwen, cache_dir=tmp_path)
    assert rep.rows_out == 2
    msgs, tools = chat(ds[1])
    assert tools[0]['function']['name'] == 'multiply' and msgs[2]['train'] is False
    assert out[1]['input_ids'] == qwen.apply_chat_template(hf(msgs), tools=tools)['input_ids']
    assert trained_text(qwen, out[1]) == ['The result of 6*8 is 48.<|im_end|>']  # the call has loss_weight 0; the result is never trained
    assert trained_text(qwen, out[0]) == ['I am an AI assistant.<|im_end|>']

def test_openai_weight_and_tool_calls(qwen, tmp_path):
    "OpenAI's per-message weight, and a tool call with arguments as JSON text: the call is trained."
    ds = load_records(FIX/'openai_finetuning.jsonl')
    out, _ = prepare_dataset(FIX/'openai_finetuning.jsonl', qwen, cache_dir=tmp_path)
    assert trained_text(qwen, out[0]) == ["Paris, as if everyone doesn't know that already.<|im_end|>"]
    msgs, tools = chat(ds[1])
    assert msgs[1]['tool_calls'][0]['function']['arguments'] == {'location': 'San Francisco, USA', 'format': 'celsius'}
    assert out[1]['input_ids'] == qwen.apply_chat_template(hf(msgs), tools=tools)['input_ids']
    assert trained_text(qwen, out[1]) == ['<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "San Francisco, USA", "format": "celsius"}}\n</tool_call><|im_end|>']

GLAIVE = FIX/'llamafactory_glaive_toolcall_en_demo_excerpt.json'

def check_tool_conversation(tok, row, ex, tpl=None):
    "Ids are apply_chat_template's with the tools; one trained run per assistant turn; no tool result is trained."
    msgs, tools = chat(row)
    assert ex['input_ids'] == tok.apply_chat_template(hf(msgs), tools=tools, chat_template=tpl)['input_ids']
    runs = trained_text(tok, ex)
    assert len(runs) == sum(m['role'] == 'assistant' for m in msgs)
    calls = [m['tool_calls'][0]['function'] for m in msgs if m.get('tool_calls')]
    for call, run in zip(calls, [r for r in runs if 'calculate_area' in r]): assert json.dumps(call['arguments']) in run
    assert len([r for r in runs if 'calculate_area' in r]) == len(calls) == 3
    assert not any('"area"' in r for r in runs)
    return runs

def test_sharegpt_tool_calls_with_dataset_info(qwen, tmp_path):
    "LLaMA-Factory's glaive tool-calling demo, read through its dataset_info.json entry, on Qwen2.5's own template."
    ds = load_records(GLAIVE, columns=INFO['glaive_toolcall_en_demo'])
    assert [len(to_tools({'tools': t})) for t in ds['tools']] == [2, 0]
    out, rep = prepare_dataset(GLAIVE, qwen, columns=INFO['glaive_toolcall_en_demo'], cache_dir=tmp_path)
    assert rep.rows_out == 2
    runs = check_tool_conversation(qwen, ds[0], out[0])
    assert runs[0] == '<tool_call>\n{"name": "calculate_area", "arguments": {"shape": "rectangle", "dimensions": [5, 3]}}\n</tool_call><|im_end|>'

@pytest.mark.parametrize('name', ['vllm_tool_chat_template_hermes.jinja', 'vllm_tool_chat_template_llama3.1_json.jinja'])
def test_tool_templates(name, tmp_path):
    "Hermes' and Llama-3.1's tool templates (SmolLM2's vocabulary; Llama-3's header tokens added for the latter)."
    tpl = (FIX/name).read_text()
    tok = fix_tokenizer(load_tok('smollm2'), 'llama3' if 'llama' in name else 'chatml')
    ds = load_records(GLAIVE, columns=INFO['glaive_toolcall_en_demo'])
    out, rep = prepare_dataset(GLAIVE, tok, template=tpl, columns=INFO['glaive_toolcall_en_demo'], cache_dir=tmp_path)
    assert rep.rows_out == 2
    check_tool_conversation(tok, ds[0], out[0], tpl)

def test_mistral_tool_calls(tmp_path):
    "Mistral v0.3's own template, three user turns: it drops the content of a call turn and writes [AVAILABLE_TOOLS] before the last user turn only, yet each call is found in one rendering and trained whole."
    tok = load_tok('mistral-7b-instruct-v0.3')
    ds = load_records(GLAIVE, columns=INFO['glaive_toolcall_en_demo'])
    msgs, tools = chat(ds[0])
    ex = tokenize_chat(msgs, tok, tools=tools)
    runs = check_tool_conversation(tok, ds[0], ex)
    assert runs[0] == '[TOOL_CALLS] [{"name": "calculate_area", "arguments": {"shape": "rectangle", "dimensions": [5, 3]}, "id": "call00001"}]</s>'
    assert runs[1] == 'The area of the rectangle with length 5 units and breadth 3 units is 15 square units.</s>'

@pytest.mark.parametrize('name', ['mistral', 'qwen', 'hermes', 'llama3.1'])
def test_tool_calls_in_one_rendering(name, monkeypatch):
    "Call turns are located from the one rendering with sentinels (a function name stands in for a call), never from rendering every prefix."
    import ft_nb.data as D
    def no_prefix(*a, **kw): raise AssertionError('rendered every prefix')
    monkeypatch.setattr(D, '_prefix_spans', no_prefix)
    tpl = None
    if name in ('mistral', 'qwen'): tok = load_tok({'mistral': 'mistral-7b-instruct-v0.3', 'qwen': 'qwen2.5'}[name])
    else:
        tpl = (FIX/f"vllm_tool_chat_template_{'llama3.1_json' if name == 'llama3.1' else name}.jinja").read_text()
        tok = fix_tokenizer(load_tok('smollm2'), 'llama3' if name == 'llama3.1' else 'chatml')
    ds = load_records(GLAIVE, columns=INFO['glaive_toolcall_en_demo'])
    msgs, tools = chat(ds[0])
    check_tool_conversation(tok, ds[0], tokenize_chat(msgs, tok, template=tpl, tools=tools), tpl)

def test_template_without_tools_is_refused(tmp_path):
    "SmolLM2 has no template of its own, so it gets the built-in chatml, which ignores tools: refused before tokenizing."
    with pytest.raises(ValueError, match='glaive_toolcall_en_demo_excerpt.json record 0: the chat template has no tool support'):
        prepare_dataset(GLAIVE, load_tok('smollm2'), columns=INFO['glaive_toolcall_en_demo'], cache_dir=tmp_path)

def test_preference_data_for_sft(qwen, tmp_path):
    "LLaMA-Factory's DPO demo: refused row by row with a hint, then trained on the chosen reply with sft_on='chosen'."
    path, entry = FIX/'llamafactory_dpo_en_demo_excerpt.json', INFO['dpo_en_demo']
    with pytest.raises(RecordError, match="no assistant turn.*pass sft_on='chosen'"): load_records(path, columns=entry)
    rec = json.loads(path.read_text())[0]
    out, rep = prepare_dataset(path, qwen, columns=entry, sft_on='chosen', cache_dir=tmp_path)
    assert rep.rows_out == 1 and trained_text(qwen, out[0]) == [rec['chosen']['value'] + '<|im_end|>']
    out, _ = prepare_dataset(path, qwen, columns=entry, sft_on='rejected', cache_dir=tmp_path)
    assert trained_text(qwen, out[0]) == [rec['rejected']['value'] + '<|im_end|>']
