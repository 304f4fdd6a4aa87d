"""Cost of exact assistant masks: `tokenize_chat` against a plain `apply_chat_template(tokenize=True)` over the same
conversations, on the real datasets and tokenizers in ../shared/data, and its growth with the number of turns.

Run: python bench/tokenize_masks.py  (prints a table; writes nothing)."""
import time, warnings
from pathlib import Path
from transformers import AutoTokenizer
from ft_nb.data import load_records, fix_tokenizer, tokenize_chat

DATA = Path(__file__).resolve().parents[1].parent/'shared'/'data'

def best_of(f, n=3):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return min(ts)

def strip_none(msgs): return [{k: v for k, v in m.items() if v is not None} for m in msgs]

def ratio_on(tok, convs, n=5):
    "Best-of-n seconds for plain `apply_chat_template` and for `tokenize_chat`, runs interleaved so noise hits both."
    plain, masked = [], []
    for _ in range(n):
        plain.append(best_of(lambda: [tok.apply_chat_template(c, tokenize=True) for c in convs], 1))
        masked.append(best_of(lambda: [tokenize_chat(c, tok) for c in convs], 1))
    return min(plain), min(masked)

def conversation(turns):
    msgs = []
    for i in range(turns):
        msgs += [{'role': 'user', 'content': f'Question number {i}: what is {i} squared, and why?'},
                 {'role': 'assistant', 'content': f'{i} squared is {i*i}, because {i} times {i} is {i*i}.'}]
    return msgs

def main():
    warnings.simplefilter('ignore')
    rows = []
    for tname in ('qwen2.5', 'mistral-7b-instruct-v0.3', 'smollm2'):
        tok = fix_tokenizer(AutoTokenizer.from_pretrained(DATA/'tokenizers'/tname))
        for dname in ('alpaca_en_demo.json', 'sharegpt_dummy_conversation.json'):
            convs = [strip_none(m) for m in load_records(DATA/'datasets'/dname)['messages']]
            if tname.startswith('mistral'): convs = [c for c in convs if c[0]['role'] != 'system']
            p, m = ratio_on(tok, convs)
            rows.append((tname, dname, len(convs), p, m))
    print(f"{'tokenizer':26} {'dataset':34} {'rows':>5} {'plain s':>8} {'masked s':>9} {'ratio':>6}")
    for t, d, n, p, m in rows: print(f'{t:26} {d:34} {n:5} {p:8.3f} {m:9.3f} {m/p:6.2f}')
    tok = fix_tokenizer(AutoTokenizer.from_pretrained(DATA/'tokenizers'/'qwen2.5'))
    print('\nturns  plain ms  masked ms  ratio  masked ms/turn')
    for turns in (1, 5, 10, 25, 50):
        c = conversation(turns)
        p, m = ratio_on(tok, [c] * 20)
        print(f'{turns:5} {p*50:9.2f} {m*50:10.2f} {m/p:6.2f} {m*50/turns:14.3f}')

if __name__ == '__main__': main()
