"""Write README.md from nbs/index.ipynb without Quarto (which `nbdev_readme` needs), or check that they agree.

Markdown cells are copied; code cells become fenced Python with their `#|` directives removed, followed by their
text outputs (not stderr: progress bars and warnings); cells marked `#| hide` (and their outputs) are left out, as nbdev's docs leave them out.
Usage: python .ci/readme.py [--check]"""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def directives(src:str)->list[str]: return [l[3:].strip() for l in src.splitlines() if l.startswith('#|')]

def output_md(o:dict)->str:
    if o['output_type'] == 'stream': return '' if o.get('name') == 'stderr' else fence(''.join(o['text']), '')
    data = o.get('data', {})
    if 'text/markdown' in data: return ''.join(data['text/markdown'])
    if 'text/plain' in data: return fence(''.join(data['text/plain']), '')
    return ''

def fence(text:str, lang:str)->str: return f'```{lang}\n{text.rstrip()}\n```'

def cell_md(c:dict)->list[str]:
    src = ''.join(c['source'])
    if c['cell_type'] == 'markdown': return [src.strip()]
    ds = directives(src)
    if any(d.startswith(('hide', 'export')) for d in ds): return []
    code = '\n'.join(l for l in src.splitlines() if not l.startswith('#|')).strip()
    outs = [] if 'hide_output' in ds else [output_md(o) for o in c.get('outputs', [])]
    return [fence(code, 'python')] * bool(code) + [o for o in outs if o]

def readme()->str:
    nb = json.loads((ROOT/'nbs'/'index.ipynb').read_text(encoding='utf-8'))
    blocks = [b for c in nb['cells'] for b in cell_md(c)]
    return '\n\n'.join(blocks) + '\n'

def main():
    text, path = readme(), ROOT/'README.md'
    if '--check' in sys.argv:
        if path.read_text(encoding='utf-8') != text:
            sys.exit('README.md does not match nbs/index.ipynb: run `python .ci/readme.py` and commit the result')
        print('README.md matches nbs/index.ipynb')
    else: path.write_text(text, encoding='utf-8'); print(f'wrote {path}')

if __name__ == '__main__': main()
