"Every tokenizer in ../shared/data on every dataset: ids equal apply_chat_template, masks cover exactly the assistant turns."
import pytest
from ft_nb.data import load_records, fix_tokenizer, tokenize_chat, tokenize_text, turn_end, prepare_dataset, TEMPLATES
from conftest import TOKENIZERS, load_tok, plain, check_trained

CHATS = ['alpaca_en_demo.json', 'sharegpt_dummy_conversation.json', 'messages_kto_en_demo.json']

@pytest.fixture(scope='module')
def records(data_dir):
    return {n: [plain(m) for m in load_records(data_dir/'datasets'/n)['messages']] for n in CHATS}

def usable(tok, convs):
    "Conversations the tokenizer's own template accepts (Mistral's rejects some role orders, by design)."
    out = []
    for c in convs:
        try: tok.apply_chat_template(c, tokenize=False)
        except Exception: continue
        out.append(c)
    return out

@pytest.mark.parametrize('tname', TOKENIZERS)
@pytest.mark.parametrize('dname', CHATS)
def test_ids_and_masks(tname, dname, records):
    tok = fix_tokenizer(load_tok(tname))
    convs = usable(tok, records[dname])
    assert len(convs) >= 0.9 * len(records[dname])
    end = turn_end(tok)
    for msgs in convs:
        ex = tokenize_chat(msgs, tok)
        assert ex['input_ids'] == tok.apply_chat_template(msgs)['input_ids']
        if tok.bos_token_id is not None and tok.bos_token != tok.eos_token: assert ex['input_ids'].count(tok.bos_token_id) <= 1
        check_trained(tok, msgs, ex, end)

@pytest.mark.parametrize('tname', ['gpt2', 'smollm2'])
@pytest.mark.parametrize('template', sorted(TEMPLATES))
def test_builtins_on_template_less_tokenizers(tname, template, records):
    "GPT-2 and SmolLM2 have no template and pad = eos: the built-ins still train every end of turn."
    tok = fix_tokenizer(load_tok(tname), template)
    assert tok.pad_token_id != tok.eos_token_id
    end = turn_end(tok)
    assert end.strip()
    convs = usable(tok, records['sharegpt_dummy_conversation.json'][:100] + records['alpaca_en_demo.json'][:100])
    assert len(convs) >= 100
    for msgs in convs:
        ex = tokenize_chat(msgs, tok)
        assert ex['input_ids'] == tok.apply_chat_template(msgs)['input_ids']
        check_trained(tok, msgs, ex, end)

@pytest.mark.parametrize('tname', TOKENIZERS)
def test_raw_text(tname, data_dir):
    tok = fix_tokenizer(load_tok(tname))
    texts = [m[0]['content'] for m in load_records(data_dir/'datasets'/'text_c4_demo.jsonl')['messages']]
    for t in texts[:50]:
        ex = tokenize_text(t, tok)
        assert ex['labels'] == ex['input_ids'] and ex['input_ids'][-1] == tok.eos_token_id
        assert tok.decode(ex['input_ids'], skip_special_tokens=True).strip() == t.strip()

@pytest.mark.parametrize('tname', TOKENIZERS)
def test_prepare_every_dataset(tname, data_dir, tmp_path):
    tok = load_tok(tname)
    for n in CHATS + ['text_c4_demo.jsonl']:
        ds, rep = prepare_dataset(data_dir/'datasets'/n, tok, errors='skip', cache_dir=tmp_path)
        assert rep.rows_out + sum(rep.dropped.values()) + len(rep.bad) == rep.rows_in
        assert len(ds) == rep.rows_out > 0.9 * rep.rows_in
        assert 0 < rep.trained_share <= 1
