"""Build the documentation site into _docs/ (settings.ini `doc_path`) offline, without Quarto: `python .ci/docs.py`.

The generator is MkDocs with the Material theme and mkdocs-jupyter: all three are pure Python from PyPI and need no
network at build time; Material brings the sidebar in our order, a built-in (client-side) search box and good
typography, and mkdocs-jupyter renders the committed notebooks through nbconvert, so every committed output shows as
Jupyter shows it (images, markdown, HTML tables). Sphinx with myst-nb could do the same, but it would need a conf.py,
toctrees and its own show_doc integration, where MkDocs takes one generated YAML file and renders nbdev's markdown
show_doc cards as they are.

Steps: nbdev's own processors (`FilterDefaults`, run by `NBProcessor`) turn each notebook into its docs form: hidden
cells dropped, directives removed, show_doc cards added after exported code and filled by running the exported cells
(never the tests or the training cells; the committed outputs are kept). `#| export` code is shown, after its card,
as nbdev shows `#| exports` code. Then what only Quarto understands is rewritten (YAML frontmatter, `{...}` attributes,
`:::` divs, leftover `#|` options), links to the site or to notebooks become relative links, and each module gets an
API page listing its `__all__`, with a card for each name no notebook page documents. Everything generated goes to
_proc/ (mkdocs.yml and docs/); the site to _docs/. A notebook that cannot be processed is reported and skipped.
Usage: python .ci/docs.py"""
import ast, importlib, inspect, os, pkgutil, posixpath, pprint, re, shutil, subprocess, sys, time, warnings
from pathlib import Path
import nbformat, yaml

ROOT = Path(__file__).resolve().parents[1]
os.chdir(ROOT)   # nbdev finds settings.ini from the working folder

from nbdev.config import get_config
from nbdev.doclinks import _get_exps, _nbpath2html   # nbdev's own line lookup and notebook -> page name
from nbdev.process import NBProcessor
from nbdev.processors import FilterDefaults, cell_lang, exec_show_docs
from nbdev.showdoc import BasicMarkdownRenderer
from execnb.nbio import read_nb

CFG = get_config()
NBS, SITE, PROC = CFG.nbs_path, CFG.config_path/CFG.doc_path, CFG.config_path/'_proc'
SRC = PROC/'docs'
SITE_URL = CFG.doc_host.rstrip('/') + '/' + CFG.doc_baseurl.strip('/') + '/'
PROBLEMS = []   # what could not be processed; printed at the end
CARDS = {}      # page -> {name: heading id} of its show_doc cards

def problem(msg:str):
    "Report what could not be processed (as a warning annotation on GitHub Actions) and carry on"
    PROBLEMS.append(msg)
    print('::warning::' if os.environ.get('GITHUB_ACTIONS') else '  !', msg, flush=True)

## Which notebooks, in which order

def notebooks()->list[Path]:
    "index.ipynb first, then the notebooks of nbs/ by file name, then nbs/tutorials/ by file name"
    top = sorted(p for p in NBS.glob('*.ipynb') if p.name != 'index.ipynb')
    return [p for p in [NBS/'index.ipynb'] if p.exists()] + top + sorted((NBS/'tutorials').glob('*.ipynb'))

def page_path(nb:Path)->str:
    "Where nbdev puts a notebook's page (`00_data.ipynb` -> `data.html`), relative to the site root"
    return _nbpath2html(nb.relative_to(NBS)).as_posix()

## nbdev's processing

def export_shown(cell):
    "Show `#| export` code in the docs, after its show_doc card, as nbdev does for `#| exports`"
    if 'export' in cell.directives_: cell.directives_['exports'] = cell.directives_.pop('export')

def needs_exec(cell)->bool:
    "Does show_doc need this cell run: it holds exported code, only imports, or a show_doc call?"
    if cell.cell_type != 'code' or not cell.source or cell_lang(cell) != 'python': return False
    if cell.directives_.get('eval:', [''])[0].lower() == 'false': return False
    if cell.directives_.keys() & {'exports', 'exporti', 'exec_doc'}: return True
    if re.search(r'^show_doc\(', cell.source, re.M): return True
    try: trees = ast.parse(cell.source).body
    except SyntaxError: return False
    return bool(trees) and all(isinstance(t, (ast.Import, ast.ImportFrom)) for t in trees)

class exec_doc_cells(exec_show_docs):
    "nbdev's `exec_show_docs`, run only on the cells show_doc needs; a failing cell is reported and its outputs dropped"
    def __call__(self, cell):
        if not (self.nb.has_docs_ and hasattr(self, 'k') and needs_exec(cell)): return
        self.k.cell(cell)
        errors = [o for o in cell.get('outputs', []) if o.get('output_type') == 'error']
        if errors:
            problem(f"{Path(self.nb.path_).name} cell {cell.idx_}: {errors[0]['ename']}: {errors[0]['evalue']}"[:300])
            cell.outputs = []

def doc_procs()->list:
    "nbdev's docs processors (`FilterDefaults`), with `export_shown` first and `exec_doc_cells` for `exec_show_docs`"
    return [export_shown] + [exec_doc_cells if p is exec_show_docs else p for p in FilterDefaults().procs()]

def process(nb_path:Path):
    "The notebook as nbdev prepares it for the docs, or None (reported) when that fails"
    try:
        nb = read_nb(nb_path)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            NBProcessor(nb=nb, procs=doc_procs()).process()
        return nb
    except Exception as e: problem(f'{nb_path.relative_to(NBS)} skipped: {type(e).__name__}: {e}'[:400])

## Quarto-only syntax and links

ADMONITIONS = {'caution': 'warning', 'important': 'danger'}

def html_attrs(attrs:str)->str:
    "Pandoc attributes (`.cls #id key=value`) as HTML attributes"
    classes = re.findall(r'(?<![\w"])\.([\w-]+)', attrs)
    ids = re.findall(r'(?<![\w"])#([\w.-]+)', attrs)
    pairs = re.findall(r'([\w-]+)=("[^"]*"|\S+)', attrs)
    out = [f'class="{" ".join(classes)}"'] * bool(classes) + [f'id="{i}"' for i in ids[:1]]
    return ' '.join(out + [f'{k}="{v.strip(chr(34))}"' for k, v in pairs])

def attr_links(md:str)->str:
    "Links and images with Quarto `{...}` attributes become HTML elements that carry them"
    def link(m):
        bang, text, url, attrs = m.groups()
        if bang: return f'<img src="{url}" alt="{text}" {html_attrs(attrs)}>'
        return f'<a href="{url}" {html_attrs(attrs)}>{text}</a>'
    return re.sub(r'(!?)\[([^\]]*)\]\(([^)\s]+)\)\{([^}]*)\}', link, md)

def heading_attrs(md:str)->str:
    "Headings without Quarto `{#id .class}` attributes, their inline code as `<code>` (mkdocs-jupyter's TOC drops backticks)"
    md = re.sub(r'^(#{1,6} .*?)\s*\{[^}]*\}\s*$', r'\1', md, flags=re.M)
    return re.sub(r'^#{1,6} .*$', lambda m: re.sub(r'`([^`]+)`', r'<code>\1</code>', m[0]), md, flags=re.M)

def callout_open(attrs:str)->list[str]:
    "The opening of a Material admonition for a Quarto callout's attributes"
    kind = re.search(r'\.callout-(\w+)', attrs)[1]
    title = re.search(r'title="([^"]*)"', attrs)
    return [f'<div class="admonition {ADMONITIONS.get(kind, kind)}">',
            f'<p class="admonition-title">{title[1] if title else kind.title()}</p>', '']

def quarto_divs(md:str)->str:
    "`:::` fenced divs: callouts become admonitions, other divs plain `<div>`s"
    out = []
    for line in md.split('\n'):
        m = re.match(r'^:{3,}\s*(\{.*\}|[\w-]+)?\s*$', line)
        if not m: out.append(line)
        elif not m[1]: out += ['', '</div>', '']
        elif '.callout-' in m[1]: out += callout_open(m[1])
        else: out += [f'<div {html_attrs(m[1].strip("{}"))}>', '']
    return '\n'.join(out)

FENCE = re.compile(r'^(`{3,}|~{3,}).*?^\1[ \t]*$', re.M | re.S)

def outside_code(md:str, f, in_code=lambda code: code)->str:
    "`f` applied to the markdown between fenced code blocks, `in_code` to the blocks"
    out, pos = [], 0
    for m in FENCE.finditer(md):
        out += [f(md[pos:m.start()]), in_code(m[0])]
        pos = m.end()
    return ''.join(out + [f(md[pos:])])

def unlinked(code:str)->str:
    "Code as written: nbdev's symbol links (`[`name`](url)`) also land in show_doc's signature comments"
    return re.sub(r'\[(`[^`\]]+`)\]\([^)\s]+\)', r'\1', code)

def relative(target:str, page:str)->str:
    "`target` (a path from the site root, maybe with #anchor) as seen from `page`"
    path, _, anchor = target.partition('#')
    rel = posixpath.relpath(path or page, posixpath.dirname(page) or '.')
    return rel + ('#' + anchor if anchor else '')

def site_target(url:str, page:str, nb_dir:str, symbol:bool=False)->str|None:
    """The site path a link points to: absolute links to the site and links to notebooks; None for other links.
    A `symbol` link (nbdev links `name` to `page.html#name`) keeps its anchor only where that page has the card."""
    path, _, anchor = url.partition('#')
    if url.startswith(SITE_URL):
        path = path[len(SITE_URL):] or 'index.html'
        if symbol: anchor = slug(anchor) if slug(anchor) in CARDS.get(path, {}).values() else ''
        return path + ('#' + anchor if anchor else '')
    if '://' in url or not path.endswith('.ipynb'): return None
    nb = posixpath.normpath(posixpath.join(nb_dir, path))
    return _nbpath2html(Path(nb)).as_posix() + ('#' + anchor if anchor else '')

def local_links(md:str, page:str, nb_dir:str='')->str:
    "Links to this site (absolute, or to notebooks) rewritten relative to `page`"
    def fix(m):
        t = site_target(m[2], page, nb_dir, symbol=m[1].startswith('[`'))
        return m[0] if t is None else m[1] + relative(t, page) + m[3]
    md = re.sub(r'(\[[^\]]*\]\()([^)\s]+)(\))', fix, md)
    return re.sub(r'((?:href|src)=")([^"]+)(")', fix, md)

def source_lines(md:str)->str:
    "nbdev 2.4.14 writes `#LNone` in show_doc's source links: point them at the symbol's line"
    def fix(m):
        line = _get_exps(m[2]).get(m[4])
        return f'{m[1]}{"#L" + str(line) if line else ""}{m[3]}{m[4]}'
    return re.sub(r'(blob/[^/\s]+/(\S+?\.py))#LNone(.*?#{1,6} )(\S+)', fix, md, flags=re.S)

def web_markdown(md:str, page:str, nb_dir:str='')->str:
    "Notebook markdown with the Quarto-only syntax rewritten and site links made relative (code blocks untouched)"
    prose = lambda s: local_links(quarto_divs(heading_attrs(attr_links(source_lines(s)))), page, nb_dir)
    return outside_code(md, prose, unlinked)

## A processed notebook as the page mkdocs-jupyter renders

def cell_options(src:str)->dict:
    "The Quarto options nbdev leaves in a code cell (`#| echo: false`, ...)"
    return dict(re.findall(r'^#\|\s*([\w-]+):\s*(.*?)\s*$', src, re.M))

def clean_output(o:dict, page:str, nb_dir:str):
    "An output as the page shows it: errors as one line, no widget views, markdown outputs made web-ready"
    if o.get('output_type') == 'error':
        return nbformat.v4.new_output('stream', name='stderr', text=f"{o['ename']}: {o['evalue']}\n")
    data = {k: v for k, v in o.get('data', {}).items() if 'widget' not in k}
    if 'data' in o and not data: return None
    if 'text/markdown' in data: data['text/markdown'] = web_markdown(''.join(data['text/markdown']), page, nb_dir)
    if 'text/html' in data: data['text/html'] = local_links(''.join(data['text/html']), page, nb_dir)
    return nbformat.from_dict({**o, 'data': data} if 'data' in o else dict(o))

def code_cell(c, page:str, nb_dir:str):
    "A code cell without `#|` lines, its input or outputs hidden as its Quarto options say; None when nothing shows"
    opts = cell_options(c.source)
    if opts.get('include') == 'false': return None
    src = '\n'.join(l for l in c.source.splitlines() if not l.startswith('#|')).strip()
    outs = [] if opts.get('output') == 'false' else [clean_output(o, page, nb_dir) for o in c.get('outputs', [])]
    outs = [o for o in outs if o]
    hide_input = not src or opts.get('echo') == 'false'
    if hide_input and not outs: return None
    return nbformat.v4.new_code_cell(src, outputs=outs, metadata={'tags': ['remove_input']} if hide_input else {})

def subtitle(cells:list)->str:
    "A lone `> text` cell right after the title (only code before it), which nbdev leaves as a quote, is the subtitle"
    first = next((c for c in cells if c.cell_type == 'markdown' and c.source.strip()), None)
    if first and re.fullmatch(r'>\s*[^\n]+', first.source.strip()):
        cells.remove(first); return first.source.strip()[1:].strip()
    return ''

def title_cell(title:str, desc:str, page:str):
    sub = f'\n\n<div class="nb-subtitle">\n\n{web_markdown(desc, page)}\n\n</div>' if desc else ''
    return nbformat.v4.new_markdown_cell(f'# {title}{sub}')

def page_nb(nb, nb_path:Path, page:str):
    "The processed notebook as a clean notebook page: title and subtitle, markdown and code cells only"
    fm, nb_dir = getattr(nb, 'frontmatter_', {}), nb_path.parent.relative_to(NBS).as_posix().strip('.')
    cells = [c for c in nb.cells if c.cell_type != 'raw' and '<!-- WARNING: THIS FILE WAS AUTOGENERATED' not in c.source]
    desc = fm.get('description') or (subtitle(cells) if 'title' in fm else '')
    out = [title_cell(fm.get('title', nb_path.stem), desc, page)]
    for c in cells:
        if c.cell_type == 'markdown': out.append(nbformat.v4.new_markdown_cell(web_markdown(c.source, page, nb_dir)))
        elif c.cell_type == 'code': out.append(code_cell(c, page, nb_dir))
    cells = [c for c in out if c]
    for i, c in enumerate(cells): c.id = f'c{i}'   # the same page twice is the same file (mkdocs-jupyter's cache)
    meta = {k: v for k, v in nb.metadata.items() if k in ('kernelspec', 'language_info')}
    return nbformat.v4.new_notebook(cells=cells, metadata=meta)

def shown_docs(nb)->set[str]:
    "Names with a show_doc card in a processed notebook"
    sd = [c for c in nb.cells if c.cell_type == 'code' and re.search(r'^show_doc\(', c.source, re.M)]
    mds = [''.join(o.get('data', {}).get('text/markdown', '')) for c in sd for o in c.get('outputs', [])]
    return {n for md in mds for n in re.findall(r'^#{1,6} (\S+)', md, re.M)}

## API pages: every module's `__all__`

def public_modules()->dict:
    "Each importable module of the library with its `__all__`"
    pkg, mods = importlib.import_module(CFG.lib_name), {}
    for m in pkgutil.iter_modules(pkg.__path__):
        if m.name.startswith('_'): continue
        try: mod = importlib.import_module(f'{pkg.__name__}.{m.name}')
        except Exception as e: problem(f'{pkg.__name__}.{m.name} not importable: {type(e).__name__}: {e}'[:300]); continue
        mods[mod.__name__] = mod
    return mods

def slug(name:str)->str:
    "The id MkDocs gives a heading (Python-Markdown's toc slugify)"
    from markdown.extensions.toc import slugify
    return slugify(name, '-')

def summary(obj)->str:
    doc = inspect.getdoc(obj) if callable(obj) else None
    line = doc.splitlines()[0] if doc else f'`{type(obj).__name__}` constant'
    parts = line.split('`')   # a table cell: pipes escaped outside inline code (Python-Markdown keeps them inside)
    return '`'.join(p.replace('|', '\\|') if i % 2 == 0 else p for i, p in enumerate(parts))

def value_card(name:str, obj, where:str)->str:
    "A card for a name show_doc cannot document (a constant): its value"
    lines = pprint.pformat(obj, width=100 - len(name)).splitlines()
    value = ('\n' + ' ' * (len(name) + 3)).join(lines[:15] + ['...'] * (len(lines) > 15))
    return f'---\n\n### {name}\n\n```python\n{name} = {value}\n```\n\n*`{type(obj).__name__}` defined in {where}.*'

def card(name:str, obj, where:str, page:str)->str:
    if not (inspect.isfunction(obj) or inspect.isclass(obj)): return value_card(name, obj, where)
    return web_markdown(BasicMarkdownRenderer(obj, name=name)._repr_markdown_(), page)

def source_link(page:str, anchor:str, md_page:str)->str:
    "A link from a markdown page to a notebook page, by its source file so that MkDocs checks and rewrites it"
    return relative(Path(page).with_suffix('.ipynb').as_posix() + (f'#{anchor}' if anchor else ''), md_page)

def api_page(mod, documented:dict, mod_pages:dict)->str:
    "Markdown for a module's API page: a table of every public name, linked to its card; cards for the rest"
    page = f'api/{mod.__name__}.md'
    names = list(getattr(mod, '__all__', []))
    links = {n: source_link(documented[n], slug(n), page) if n in documented else f'#{slug(n)}' for n in names}
    rows = [f'| [`{n}`]({links[n]}) | {summary(getattr(mod, n, None))} |' for n in names]
    home = mod_pages.get(mod.__name__)
    where = f'[{home[1]}]({source_link(home[0], "", page)})' if home else f'`{mod.__name__}`'
    intro = f'The public names of `{mod.__name__}` (its `__all__`)' + f', explained in {where}' * bool(home)
    rest = [n for n in names if n not in documented and hasattr(mod, n)]
    cards = ['', '## Other public names', ''] + [card(n, getattr(mod, n), where, page) + '\n' for n in rest] if rest else []
    return '\n'.join([f'# {mod.__name__}', '', intro + '.', '', '| Name | Summary |', '| --- | --- |', *rows, *cards]) + '\n'

## The site

CSS = """
.md-grid { max-width: 88rem; }
.jupyter-wrapper .jp-RenderedText.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"] {
  background: var(--md-code-bg-color); color: var(--md-default-fg-color--light); }
.nb-subtitle p { font-size: 1.15em; color: var(--md-default-fg-color--light); margin-top: -0.6em; }
.jupyter-wrapper .jp-RenderedMarkdown hr, .md-typeset hr { margin: 2em 0 1em; }
.jupyter-wrapper .jp-RenderedMarkdown.jp-OutputArea-output pre { white-space: pre; word-break: normal; }
.jupyter-wrapper .jp-RenderedHTMLCommon table { font-size: 0.85em; }
.md-typeset a[target="_blank"][style] { margin-top: 0.3em; }
article > .md-typeset__scrollwrap td:first-child code { white-space: nowrap; }
"""

COLAB_BADGE = 'https://colab.research.google.com/assets/colab-badge.svg'
BADGE_SVG = """<svg xmlns="http://www.w3.org/2000/svg" width="117" height="20" role="img" aria-label="Open in Colab">
<rect width="117" height="20" rx="3" fill="#555"/><rect x="28" width="89" height="20" rx="3" fill="#f9ab00"/>
<rect x="28" width="6" height="20" fill="#f9ab00"/>
<circle cx="10.5" cy="10" r="5" fill="none" stroke="#f9ab00" stroke-width="2.5"/>
<circle cx="18.5" cy="10" r="5" fill="none" stroke="#e8710a" stroke-width="2.5"/>
<text x="72" y="14" fill="#fff" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11" text-anchor="middle">Open in Colab</text>
</svg>"""

def local_badge(dest:Path, page:str):
    "Colab's badge image served from the site (the same look, no request to Google while reading)"
    text = dest.read_text(encoding='utf-8')
    badge = relative('assets/colab-badge.svg', page)
    if COLAB_BADGE in text: dest.write_text(text.replace(COLAB_BADGE, badge), encoding='utf-8')

def mkdocs_config(nav:list)->dict:
    return {
        'site_name': CFG.title, 'site_description': CFG.description, 'site_url': SITE_URL,
        'repo_url': CFG.git_url, 'repo_name': f'{CFG.user}/{CFG.repo}', 'edit_uri': '', 'copyright': f'© {CFG.copyright}',
        'docs_dir': str(SRC), 'site_dir': str(SITE), 'use_directory_urls': False, 'nav': nav,
        'theme': {'name': 'material', 'font': False,   # system fonts: no request to Google Fonts
                  'features': ['navigation.sections', 'navigation.top', 'navigation.footer', 'toc.follow',
                               'search.highlight', 'content.code.copy'],
                  'palette': {'primary': 'indigo', 'accent': 'indigo'}},
        'extra_css': ['assets/docs.css'],
        'plugins': ['search', {'mkdocs-jupyter': {'no_prompt': True, 'cache_dir': str(PROC/'cache'), 'toc_depth': 3,
                                                  'remove_tag_config': {'remove_input_tags': ['remove_input']}}}],
        'markdown_extensions': ['tables', 'admonition', 'attr_list', 'md_in_html', {'toc': {'permalink': True}},
                                'pymdownx.highlight', 'pymdownx.superfences', 'pymdownx.inlinehilite'],
    }

def processed_notebooks()->list:
    "(notebook, processed notebook, page, title) for each notebook nbdev could process; CARDS filled"
    res = []
    for nb_path in notebooks():
        t0 = time.time()
        nb = process(nb_path)
        if nb is None: continue
        page, title = page_path(nb_path), getattr(nb, 'frontmatter_', {}).get('title', nb_path.stem)
        CARDS[page] = {n: slug(n) for n in shown_docs(nb)}
        res.append((nb_path, nb, page, title))
        print(f'  {nb_path.relative_to(NBS)} -> {page} ({time.time() - t0:.1f}s)', flush=True)
    return res

def write_notebook_page(nb_path:Path, nb, page:str)->str:
    "Write the page's notebook into _proc/docs/; its path there"
    dest = SRC/Path(page).with_suffix('.ipynb')
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(page_nb(nb, nb_path, page), dest)
    local_badge(dest, page)
    return dest.relative_to(SRC).as_posix()

def module_pages(nbs:list)->dict:
    "Module name -> (page, title) of the notebook that exports it (`#| default_exp`)"
    exp = lambda p: re.search(r'#\|\s*default_exp\s+([\w.]+)', p.read_text(encoding='utf-8'))
    exps = [(exp(p), page, title) for p, _, page, title in nbs]
    return {f'{CFG.lib_name}.{m[1]}': (page, title) for m, page, title in exps if m}

def write_api_pages(nbs:list)->list:
    "Write an API page for each module into _proc/docs/api/; their nav entries"
    documented = {n: page for page, cards in reversed(CARDS.items()) for n in cards}
    mods, home = public_modules(), module_pages(nbs)
    (SRC/'api').mkdir(exist_ok=True)
    for name, mod in mods.items(): (SRC/'api'/f'{name}.md').write_text(api_page(mod, documented, home), encoding='utf-8')
    return [{name: f'api/{name}.md'} for name in mods]

def write_pages()->list:
    "Process every notebook, write its page and the API pages into _proc/docs/; the site's nav"
    shutil.rmtree(SRC, ignore_errors=True); (SRC/'assets').mkdir(parents=True)
    (SRC/'assets'/'docs.css').write_text(CSS); (SRC/'assets'/'colab-badge.svg').write_text(BADGE_SVG)
    nbs = processed_notebooks()
    entries = [(p.parent.name == 'tutorials', {title: write_notebook_page(p, nb, page)}) for p, nb, page, title in nbs]
    guides, tutorials = [e for tut, e in entries if not tut], [e for tut, e in entries if tut]
    api = write_api_pages(nbs)
    return guides + [{'Tutorials': tutorials}] * bool(tutorials) + [{'API reference': api}] * bool(api)

def main():
    t0 = time.time()
    print(f'processing notebooks in {NBS.relative_to(ROOT)}/ with nbdev', flush=True)
    nav = write_pages()
    cfg_file = PROC/'mkdocs.yml'
    cfg_file.write_text(yaml.safe_dump(mkdocs_config(nav), sort_keys=False, allow_unicode=True), encoding='utf-8')
    print(f'rendering with mkdocs into {SITE.relative_to(ROOT)}/', flush=True)
    env = {**os.environ, 'NO_MKDOCS_2_WARNING': '1'}
    r = subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--clean', '-f', str(cfg_file)], env=env)
    if r.returncode: sys.exit(f'mkdocs build failed (exit {r.returncode})')
    pages = len(list(SITE.rglob('*.html'))) - len(list(SITE.glob('404.html')))
    print(f'built {pages} pages into {SITE.relative_to(ROOT)}/ in {time.time() - t0:.0f}s')
    if PROBLEMS: print(f'{len(PROBLEMS)} problem(s):', *PROBLEMS, sep='\n  ')

if __name__ == '__main__': main()
