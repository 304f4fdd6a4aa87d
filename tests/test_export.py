"""GGUF export on the architectures `load_model` supports, on tokenizers llama.cpp's converter has never seen, and from the command line.

Each GGUF is run in llama.cpp (llama-cpp-python, built from the pinned sdist) against transformers: the prompt's tokens equal and
the logits within `GGUF_TOLERANCE` (a fraction of the largest logit). The models are tiny with random weights, so greedy answers (which hang on near-ties there) are
compared on the trained demo model instead, in nbs/10a_export.ipynb.

Tokenizers: SmolLM2's, Qwen2.5's and Mistral v0.3's are real (../shared/data). Gemma and Phi-3 ship a SentencePiece
`tokenizer.model`, which llama.cpp's converters for them read; the stand-ins here are SentencePiece models trained on the
shared Alpaca data with those models' special tokens, `tokenizer_config.json` fields and published chat templates
(tests/chat_templates/gemma-it.json, phi-3-mini-4k-instruct.json)."""
import json, shutil, subprocess, sys, warnings
from pathlib import Path
import pytest, torch
from transformers import AutoTokenizer, GemmaConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config
from ft_nb.data import fix_tokenizer
from ft_nb.export import LLAMA3_SPLIT, QWEN2_SPLIT, check_gguf, convert_to_gguf, export_gguf, llama_cpp_pre
from ft_nb.testing import save_model

pytestmark = pytest.mark.slow   # converts and runs a dozen GGUFs (about two minutes)
TEMPLATES = Path(__file__).parent/'chat_templates'
DIMS = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
PROMPTS = ['What is 8 plus 1?',
           "It's 2024: I'll pay $1,234.56 for 3 apples.\n\n  Indented\tand   spaced... naïve café 東京 🤖 DON'T",
           [{'role': 'user', 'content': 'Spell the word river.'}, {'role': 'assistant', 'content': 'r i v e r.'}, {'role': 'user', 'content': 'And 12 + 30?'}]]

def _texts(data_dir, n=800)->list[str]:
    rows = json.loads((data_dir/'datasets'/'alpaca_en_demo.json').read_text())
    return [f"{r['instruction']} {r['input']} {r['output']}" for r in rows[:n]]

def spm_tokenizer(folder:Path, kind:str, data_dir)->Path:
    "A SentencePiece tokenizer folder shaped like Gemma's, Mistral v0.3's or Phi-3's: tokenizer.model plus tokenizer_config.json."
    import sentencepiece as spm
    folder.mkdir(parents=True, exist_ok=True)
    if kind == 'gemma':   # Gemma: pad 0, eos 1, bos 2, unk 3, turn markers in the model, no dummy prefix
        ids = dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece='<pad>', eos_piece='<eos>', bos_piece='<bos>', unk_piece='<unk>')
        extra, prefix, cls, t = ['<start_of_turn>', '<end_of_turn>'], False, 'GemmaTokenizer', json.loads((TEMPLATES/'gemma-it.json').read_text())
    elif kind == 'mistral':   # Mistral v0.3: Llama 2's layout (unk 0, bos 1, eos 2), [INST] and [/INST] control symbols in the model
        ids = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1, control_symbols=['[INST]', '[/INST]'])
        cfg = json.loads((data_dir/'tokenizers'/'mistral-7b-instruct-v0.3'/'tokenizer_config.json').read_text())
        extra, prefix, cls, t = [], True, 'LlamaTokenizer', {'bos_token': '<s>', 'eos_token': '</s>', 'chat_template': cfg['chat_template']}
    else:                 # Phi-3: Llama 2's layout, chat markers added as tokens beside the model
        ids = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
        extra, prefix, cls, t = [], True, 'LlamaTokenizer', json.loads((TEMPLATES/'phi-3-mini-4k-instruct.json').read_text())
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_texts(data_dir)), model_prefix=str(folder/'tokenizer'), vocab_size=1000, model_type='bpe',
                                   byte_fallback=True, add_dummy_prefix=prefix, user_defined_symbols=extra, minloglevel=2, **ids)
    (folder/'tokenizer.vocab').unlink()
    cfg = {'tokenizer_class': cls, 'bos_token': t['bos_token'], 'add_bos_token': kind == 'gemma', 'chat_template': t['chat_template']}
    cfg.update(eos_token=t['eos_token'], pad_token='<pad>', unk_token='<unk>') if kind == 'gemma' else cfg.update(unk_token='<unk>', eos_token='</s>')
    (folder/'tokenizer_config.json').write_text(json.dumps(cfg))
    if kind == 'phi3':
        from tokenizers import AddedToken
        tok = AutoTokenizer.from_pretrained(folder)   # as microsoft/Phi-3-mini-4k-instruct: its role markers strip the whitespace after them
        tok.add_special_tokens({'eos_token': '<|endoftext|>', 'pad_token': '<|endoftext|>',
                                'additional_special_tokens': [AddedToken(t, rstrip=True, special=True) for t in ['<|assistant|>', '<|end|>', '<|system|>', '<|user|>']]})
        tok.save_pretrained(folder)
    return folder

def _bpe_tokenizer(folder:Path, split:str|None, data_dir)->Path:
    "A byte-level BPE trained here (so no hash table knows it), splitting text with `split` (None: GPT-2's rule), ChatML template."
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = (pre_tokenizers.ByteLevel(add_prefix_space=False) if split is None else
                        pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior='isolated'), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]))
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(_texts(data_dir), trainers.BpeTrainer(vocab_size=1200, special_tokens=['<|endoftext|>'], show_progress=False,
                                                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = fix_tokenizer(PreTrainedTokenizerFast(tokenizer_object=tk, eos_token='<|endoftext|>'))
    tok.save_pretrained(folder)
    return folder

def _model(cfg_cls, src, folder:Path, **kw)->Path:
    "A random model of `cfg_cls` with the tokenizer in `src` (ChatML added where it has no template), saved like a hub checkpoint."
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        tok = AutoTokenizer.from_pretrained(src)
        if not tok.chat_template: tok = fix_tokenizer(tok)
        tok.save_pretrained(tok_dir := folder/'tok')
    save_model(cfg_cls(**{**DIMS, **kw}), str(tok_dir), folder)
    for f in [*tok_dir.iterdir(), *Path(src).glob('tokenizer.model')]: (folder/f.name).write_bytes(f.read_bytes())   # a hub checkpoint keeps tokenizer.model
    return folder

def _checked(model_dir:Path, outtype='f16'):
    g = convert_to_gguf(model_dir, model_dir/f'model-{outtype}.gguf', outtype)
    c = check_gguf(g, model_dir, PROMPTS, outtype)
    assert c.prompt_tokens_equal == c.prompts, (c, [a[0] for a in c.answers])
    assert c.within_tolerance, c
    return c

@pytest.mark.parametrize('arch', ['llama', 'qwen2', 'mistral', 'mistral+chatml', 'phi3'])   # gemma: below, from an adapter
def test_architecture(arch, tmp_path, data_dir):
    "mistral+chatml: ChatML's markers added to a SentencePiece vocabulary (as `fix_tokenizer` does for a base model without a template)."
    cls, tok, kw = {'llama': (LlamaConfig, data_dir/'tokenizers'/'smollm2', {}),
                    'qwen2': (Qwen2Config, data_dir/'tokenizers'/'qwen2.5', {}),
                    'mistral': (MistralConfig, None, {}), 'mistral+chatml': (MistralConfig, None, {}),
                    'phi3': (Phi3Config, None, {'num_key_value_heads': 2, 'pad_token_id': 0})}[arch]
    if tok is None: tok = spm_tokenizer(tmp_path/'spm', arch.split('+')[0], data_dir)
    if arch.endswith('chatml'):
        cfg = json.loads((tok/'tokenizer_config.json').read_text())
        (tok/'tokenizer_config.json').write_text(json.dumps({k: v for k, v in cfg.items() if k != 'chat_template'}))
    folder = _model(cls, tok, tmp_path/arch, **kw)
    c = _checked(folder)
    if arch.endswith('chatml'): assert '<|im_start|>' in AutoTokenizer.from_pretrained(folder).chat_template

def test_gemma_adapter_merged_then_exported(tmp_path, data_dir):
    "Gemma's converter reads tokenizer.model, which transformers 5 does not save: merging carries it over from the base."
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    base = _model(GemmaConfig, spm_tokenizer(tmp_path/'spm', 'gemma', data_dir), tmp_path/'gemma', head_dim=64)
    assert (base/'tokenizer.model').exists()
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=8, target_modules=['q_proj', 'v_proj', 'down_proj']))
    torch.manual_seed(0)
    for n, p in pm.named_parameters():
        if 'lora_B' in n: torch.nn.init.normal_(p, std=0.05)
    pm.save_pretrained(tmp_path/'adapter')
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp_path/'adapter')
    assert not (tmp_path/'adapter'/'tokenizer.model').exists()   # what transformers 5 saves: tokenizer.json only
    rep = export_gguf(tmp_path/'adapter', tmp_path/'out'/'gemma.gguf', prompts=PROMPTS)
    assert (Path(rep.merged)/'tokenizer.model').exists() and rep.merge_max_dlogit < 1e-3, rep
    assert rep.check.prompt_tokens_equal == rep.check.prompts and rep.check.within_tolerance, rep
    assert (tmp_path/'out'/'Modelfile').exists() and 'gemma.gguf' in (tmp_path/'out'/'README.md').read_text()

@pytest.mark.parametrize('kind', ['gemma', 'mistral-tokenizer.json'])
def test_sentencepiece_tokenizer_without_its_model_is_refused(kind, tmp_path, data_dir):
    "Gemma's converter fails without tokenizer.model; Mistral v0.3's tokenizer.json alone would convert, but tokenize [INST] as text."
    if kind == 'gemma': base = _model(GemmaConfig, spm_tokenizer(tmp_path/'spm', 'gemma', data_dir), tmp_path/'m', head_dim=64)
    else: base = _model(MistralConfig, data_dir/'tokenizers'/'mistral-7b-instruct-v0.3', tmp_path/'m')
    (base/'tokenizer.model').unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError, match='which this folder lacks'): convert_to_gguf(base, base/'x.gguf')
    assert not [p for p in base.iterdir() if 'x.gguf' in p.name]

@pytest.mark.parametrize('split,pre', [(None, 'gpt-2'), (LLAMA3_SPLIT, 'llama-bpe'), (QWEN2_SPLIT, 'qwen2')])
def test_pretokenizer_the_converter_never_saw(split, pre, tmp_path, data_dir):
    "A BPE trained here has a hash no table knows; ft_nb names its pre-tokenizer from tokenizer.json, and llama.cpp then tokenizes as transformers."
    import gguf
    tok_dir = _bpe_tokenizer(tmp_path/'tok', split, data_dir)
    assert llama_cpp_pre(tok_dir) == pre
    folder = _model(LlamaConfig, tok_dir, tmp_path/'m')
    c = _checked(folder)
    assert gguf.GGUFReader(c.gguf).fields['tokenizer.ggml.pre'].contents() == pre

def test_cli_export(tmp_path, data_dir):
    """`ft_nb export` from an adapter folder: merged, converted, Modelfile and card beside it; `ft_nb push --dry-run` lists them; a second run is refused.
    (The demo's adapter, answered in llama.cpp as in transformers, is the export notebook's slow cell: the same `export_gguf` the command calls.)"""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    base = _model(LlamaConfig, data_dir/'tokenizers'/'smollm2', tmp_path/'base')
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules=['q_proj', 'v_proj']))
    pm.save_pretrained(tmp_path/'adapter')
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp_path/'adapter')
    out, ft_nb = tmp_path/'gguf'/'tiny.gguf', shutil.which('ft_nb')
    r = subprocess.run([ft_nb, 'export', str(tmp_path/'adapter'), '--gguf', str(out), '--type', 'q8_0', '--no-check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert 'tiny.gguf: q8_0' in r.stdout and "template 'chatml'" in r.stdout and 'not checked in llama.cpp' in r.stdout, r.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ['Modelfile', 'README.md', 'ft_nb_card.json', 'tiny-merged', 'tiny.gguf']
    plan = subprocess.run([ft_nb, 'push', str(out), 'me/tiny-gguf', '--dry-run'], capture_output=True, text=True)
    assert plan.returncode == 0 and [l.split()[0] for l in plan.stdout.splitlines()[1:]] == ['Modelfile', 'README.md', 'ft_nb_card.json', 'tiny.gguf'], plan.stdout
    again = subprocess.run([ft_nb, 'export', str(tmp_path/'adapter'), '--gguf', str(out), '--no-check'], capture_output=True, text=True)
    assert again.returncode == 1 and 'exists: pass overwrite=True' in again.stderr, again.stderr
