"""The documentation site, built once per session by the command CI runs (`python .ci/docs.py`, into settings.ini's
`doc_path`): every local link, anchor and image resolves; every public name of the library (each module's `__all__`)
has a card; no page shows notebook or Quarto syntax, raw markdown, YAML or a traceback; and each page, served over
http, renders its title and search box in headless Chromium (Debian's `chromium`, through Playwright). Screenshots
of the home page, an API page and a tutorial are kept in tests/artifacts/."""
import configparser, functools, http.server, importlib, pkgutil, re, shutil, socket, subprocess, sys, threading
from pathlib import Path
from urllib.parse import unquote, urlsplit
import pytest
from bs4 import BeautifulSoup

ROOT = Path(__file__).resolve().parents[1]
CFG = configparser.ConfigParser(); CFG.read(ROOT/'settings.ini')
SITE = ROOT/CFG['DEFAULT']['doc_path']
SITE_URL = CFG['DEFAULT']['doc_host'].rstrip('/') + '/' + CFG['DEFAULT']['doc_baseurl'].strip('/') + '/'
CHROMIUM = shutil.which('chromium') or '/usr/bin/chromium'
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                 '--disable-sync', '--no-first-run']
ARTIFACTS = Path(__file__).parent/'artifacts'
CODE = ['pre', 'code', 'script', 'style']
pytestmark = pytest.mark.slow   # builds the whole site (about a minute), then opens every page in Chromium

@pytest.fixture(scope='session')
def site():
    "The site, built by `python .ci/docs.py`; its log is kept in tests/artifacts/docs_build.log"
    r = subprocess.run([sys.executable, '.ci/docs.py'], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS/'docs_build.log').write_text(r.stdout + r.stderr)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return SITE

@pytest.fixture(scope='session')
def pages(site)->dict:
    "Each built page (path from the site root) parsed"
    return {p.relative_to(site).as_posix(): BeautifulSoup(p.read_text(encoding='utf-8'), 'html.parser')
            for p in sorted(site.rglob('*.html'))}

def content(soup): return soup.select_one('article') or soup.body

def prose(soup)->str:
    "The page's visible text outside code blocks, inline code and scripts"
    art = BeautifulSoup(str(content(soup)), 'html.parser')
    for el in art.find_all(CODE) + art.select('[hidden], .clipboard-copy-txt'): el.decompose()
    return art.get_text('\n')

## Every notebook is a page, in the book's order

def notebook_pages()->list:
    "The page nbdev names for each notebook: index first, then nbs/ and nbs/tutorials/ by file name"
    nbs = ROOT/CFG['DEFAULT']['nbs_path']
    top = sorted(p for p in nbs.glob('*.ipynb') if p.name != 'index.ipynb')
    files = [p.relative_to(nbs) for p in [nbs/'index.ipynb'] + top + sorted(nbs.glob('tutorials/*.ipynb'))]
    return [p.with_name(re.sub(r'^\d+[a-zA-Z0-9]*_', '', p.name.lower())).with_suffix('.html').as_posix() for p in files]

def test_every_notebook_is_a_page_in_order(pages):
    nav = [a['href'] for a in pages['index.html'].select('nav.md-nav--primary a.md-nav__link[href]')]
    order = list(dict.fromkeys(normalise(h.split('#')[0]) or 'index.html' for h in nav if h.endswith('.html')))
    expected = notebook_pages()
    assert [p for p in order if p in expected] == expected, (order, expected)
    assert pages['index.html'].select_one('article h1').get_text().strip('¶ ')

## Links and images

def normalise(path:str)->str:
    "`a/./b/../c` -> `a/c`"
    parts = []
    for p in path.split('/'):
        if p == '..': parts = parts[:-1]
        elif p not in ('', '.'): parts.append(p)
    return '/'.join(parts)

def local_target(url:str, page:str):
    "(file from the site root, anchor) a link points to; None for a link off the site"
    parts, base = urlsplit(url), urlsplit(SITE_URL).path
    if url.startswith(SITE_URL): parts = urlsplit(base + url[len(SITE_URL):])    # the site's own address
    if parts.scheme or parts.netloc: return None
    path = unquote(parts.path)
    if path.startswith(base): return normalise(path[len(base):]) or 'index.html', parts.fragment   # absolute paths
    return (normalise(f'{Path(page).parent.as_posix()}/{path}') if path else page), parts.fragment

def links(soup):
    for tag, attr in (('a', 'href'), ('img', 'src'), ('link', 'href'), ('script', 'src'), ('source', 'src')):
        for el in soup.find_all(tag):
            url = el.get(attr)
            if url and not url.startswith(('data:', 'mailto:', 'javascript:')): yield url   # skips nbconvert's empty MathJax src

def ids(soup)->set:
    return {el['id'] for el in soup.find_all(id=True)} | {el['name'] for el in soup.find_all('a', attrs={'name': True})}

def test_links_and_images_resolve(site, pages):
    broken, checked = [], 0
    for page, soup in pages.items():
        for url in links(soup):
            t = local_target(url, page)
            if t is None: continue
            path, anchor = t
            f = site/path
            if f.is_dir(): f, path = f/'index.html', normalise(path + '/index.html')
            checked += 1
            if not f.is_file(): broken.append(f'{page}: {url} (no {path})')
            elif anchor and path in pages and anchor not in ids(pages[path]):
                broken.append(f'{page}: {url} (no #{anchor} in {path})')
    assert checked > 100 and not broken, '\n'.join(broken[:40])

def test_site_url_agrees_with_settings(site, pages):
    canon = pages['index.html'].find('link', rel='canonical')
    assert canon and canon['href'] == SITE_URL + 'index.html', (canon, SITE_URL)

## Every public name documented

def public_names()->dict:
    lib = importlib.import_module(CFG['DEFAULT']['lib_name'])
    names = [m.name for m in pkgutil.iter_modules(lib.__path__) if not m.name.startswith('_')]
    mods = [importlib.import_module(f'{lib.__name__}.{n}') for n in names]
    return {m.__name__: list(getattr(m, '__all__', [])) for m in mods}

def test_every_public_name_has_a_card(pages):
    headings = {h.get_text().replace('¶', '').strip() for s in pages.values() for h in content(s).find_all(['h2', 'h3', 'h4'])}
    names = public_names()
    missing = [f'{m}.{n}' for m, ns in names.items() for n in ns if n not in headings]
    assert sum(map(len, names.values())) > 20 and not missing, missing

## No raw notebook, markdown, YAML or Quarto syntax; no tracebacks

RAW = {'a `#|` directive': r'^\s*#\|', 'literal **': r'\*\*', 'a raw heading': r'^#{1,6} ', 'a code fence': r'^\s*```',
       'a literal backtick': r'`', 'a raw link': r'\]\(', 'YAML frontmatter': r'^---\s*\n+\s*[\w-]+: ',
       'Quarto attributes': r'\{(target=|\.[\w-]+|#[\w-]+ )', 'a Quarto div': r'^\s*:::'}

def test_no_raw_syntax_or_tracebacks(pages):
    bad = []
    for page, soup in pages.items():
        text, full = prose(soup), content(soup).get_text('\n')
        bad += [f'{page}: {what}: {m.group(0)!r}' for what, pat in RAW.items() for m in [re.search(pat, text, re.M)] if m]
        code = [pre.get_text() for pre in content(soup).find_all('pre')]
        if any(re.search(r'^\s*#\|', c, re.M) for c in code): bad.append(f'{page}: a `#|` line in code')
        if any(re.search(r'\[`[^`]+`\]\(', c) for c in code): bad.append(f'{page}: a markdown link in code')
        if 'Traceback (most recent call last)' in full: bad.append(f'{page}: a Python traceback')
        if 'output-file:' in full: bad.append(f'{page}: nbdev frontmatter')
    assert not bad, '\n'.join(bad)

def test_tutorials_show_the_colab_badge(pages):
    tutorials = [p for p in pages if p.startswith('tutorials/')]
    assert tutorials
    for p in tutorials: assert pages[p].select('a[href*="colab.research.google.com"] img'), p

## In the browser

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.fixture(scope='session')
def served(site, tmp_path_factory):
    "The site over http on a free local port, at the path it will have on the web"
    root = tmp_path_factory.mktemp('serve')
    prefix = urlsplit(SITE_URL).path.strip('/')
    (root/prefix).parent.mkdir(parents=True, exist_ok=True)
    (root/prefix).symlink_to(site.resolve(), target_is_directory=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', _free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{server.server_port}/{prefix}/'
    server.shutdown()

def shot_pages(pages)->dict:
    "The pages to screenshot: home, the first API page, the first tutorial"
    first = lambda pre: next(p for p in pages if p.startswith(pre))
    return {'docs_index.png': 'index.html', 'docs_api.png': first('api/'), 'docs_tutorial.png': first('tutorials/')}

def test_pages_render_in_chromium(served, pages):
    from playwright.sync_api import sync_playwright
    assert Path(CHROMIUM).exists(), 'Chromium is needed (Debian: apt-get install chromium)'
    ARTIFACTS.mkdir(exist_ok=True)
    shots, bad = {v: k for k, v in shot_pages(pages).items()}, []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={'width': 1280, 'height': 1400})
        for path in pages:
            if path == '404.html': continue
            page.goto(served + path, wait_until='load')
            h1 = page.locator('article h1').first
            if not h1.is_visible() or h1.inner_text().replace('¶', '').strip() not in page.title(): bad.append(f'{path}: title')
            if not page.locator('input.md-search__input').count(): bad.append(f'{path}: no search box')
            broken = page.evaluate("[...document.querySelectorAll('article img')]"
                                   ".filter(i => !i.complete || !i.naturalWidth).map(i => i.src)")
            bad += [f'{path}: image {src} did not load' for src in broken]
            if path in shots: page.screenshot(path=str(ARTIFACTS/shots[path]))
        browser.close()
    assert not bad, '\n'.join(bad)
    assert all((ARTIFACTS/s).stat().st_size > 10_000 for s in shots.values())

def test_search_finds_a_public_name(served, pages):
    "The search box answers from the built index (client-side, offline)"
    from playwright.sync_api import sync_playwright
    name = next(n for ns in public_names().values() for n in ns if len(n) > 6)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={'width': 1280, 'height': 900})
        page.goto(served + 'index.html', wait_until='load')
        page.locator('input.md-search__input').click()
        page.keyboard.type(name, delay=20)
        page.wait_for_selector('.md-search-result__item', timeout=20_000)
        assert page.locator('.md-search-result__item').count() > 0
        browser.close()
