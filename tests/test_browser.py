"""Notebook widgets in a real JupyterLab, driven by headless Chromium (Debian's `chromium`, through Playwright).

The live progress panel: a notebook that fine-tunes a tiny model with `progress='notebook'` is run in the browser; the
test waits for the run to end and checks that the widget panel rendered: a progress bar that reached the last step, the
metrics table, and the loss plot as an image. The screenshot is kept in tests/artifacts/jupyterlab_progress.png.

The chat: a notebook that gives a tiny model a LoRA adapter with non-zero B matrices and shows `chat(..., compare=True)`;
the test types a prompt into the chat's box, clicks Send, waits for the streamed answers, and checks the side-by-side
table (base and fine-tuned, both answered). The screenshot is kept in tests/artifacts/jupyterlab_chat.png."""
import contextlib, json, os, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path

CHROMIUM = shutil.which('chromium') or '/usr/bin/chromium'
ARTIFACTS = Path(__file__).parent/'artifacts'

TRAIN_CELLS = [
    "import tempfile\nfrom ft_nb.testing import quiet, tiny_llama\nquiet()\n"
    "from ft_nb.models import load_model\nfrom ft_nb.train import finetune",
    "model, tok = load_model(tiny_llama(), quant=None)",
    "res = finetune(model, tok, {data!r}, output_dir=tempfile.mkdtemp(), method='lora', max_steps=12, logging_steps=2, max_length=64,\n"
    "               per_device_train_batch_size=2, gradient_accumulation_steps=1, save_strategy='no', progress='notebook')",
    "print('RUN', 'FINISHED', res.steps)",
]

CHAT_CELLS = [
    "import torch\nfrom ft_nb.testing import quiet, tiny_llama\nquiet()\n"
    "from ft_nb.models import load_model\nfrom ft_nb.methods import apply_method\nfrom ft_nb.chat import chat",
    "model, tok = load_model(tiny_llama('qwen2.5'), quant=None)\nmodel = apply_method(model, 'lora', preset='small')\n"
    "torch.manual_seed(0)\nwith torch.no_grad():\n    for n, p in model.named_parameters():\n"
    "        if 'lora_B' in n: p.normal_(0, 0.5)   # an adapter that changes the answers",
    "chat(model, tok, compare=True, max_new_tokens=24)",
    "print('CHAT', 'READY')",
]

def write_notebook(path, cells:list[str]):
    "A notebook of code cells `cells` at `path`."
    nb = {'cells': [{'cell_type': 'code', 'execution_count': None, 'id': f'c{i}', 'metadata': {}, 'outputs': [], 'source': s}
                    for i, s in enumerate(cells)],
          'metadata': {'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'}}, 'nbformat': 4, 'nbformat_minor': 5}
    path.write_text(json.dumps(nb))
    return path

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _wait_http(url, timeout=90):
    end = time.time() + timeout
    while time.time() < end:
        try: return urllib.request.urlopen(url, timeout=5).status
        except Exception: time.sleep(1)
    raise TimeoutError(f'JupyterLab did not answer at {url}')

@contextlib.contextmanager
def jupyterlab(root, data_dir):
    "A JupyterLab serving `root` (its kernels run there); yields a function that opens a notebook in headless Chromium and runs all its cells."
    from playwright.sync_api import sync_playwright
    assert Path(CHROMIUM).exists(), "Chromium is needed (Debian: apt-get install chromium); .ci/run installs it"
    port, token = _free_port(), 'ft-nb-test'
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'JUPYTER_PLATFORM_DIRS': '1', 'FT_NB_DATA': str(data_dir)}
    lab = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', f'--port={port}', '--ServerApp.ip=127.0.0.1',
                            f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={root}', '--LabApp.expose_app_in_browser=True',
                            '--allow-root'], env=env, stdout=subprocess.DEVNULL, stderr=open(root/'lab.log', 'w'))
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        _wait_http(f'http://127.0.0.1:{port}/api/status?token={token}')
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=['--no-sandbox'])
            def run_notebook(name:str):
                "Open `name` in the lab, wait for its kernel, run all cells; the page."
                page = browser.new_page(viewport={'width': 1400, 'height': 1600})
                page.goto(f'http://127.0.0.1:{port}/lab/tree/{name}?token={token}')
                page.wait_for_selector('.jp-Notebook', timeout=120_000)
                page.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget && "
                                       "window.jupyterapp.shell.currentWidget.sessionContext.session?.kernel?.status === 'idle'", timeout=120_000)
                page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
                return page
            yield run_notebook
            browser.close()
    finally:
        lab.terminate()
        try: lab.wait(20)
        except subprocess.TimeoutExpired: lab.kill()

def test_progress_panel_renders_in_jupyterlab(tmp_path, data_dir):
    write_notebook(tmp_path/'train.ipynb', [c.format(data=str(data_dir/'datasets'/'alpaca_en_demo.json')) for c in TRAIN_CELLS])
    with jupyterlab(tmp_path, data_dir) as run_notebook:
        page = run_notebook('train.ipynb')
        page.wait_for_selector('text=RUN FINISHED 12', timeout=400_000)
        page.wait_for_timeout(1000)
        panel = page.locator('.widget-vbox').filter(has=page.get_by_text('12/12', exact=True)).last   # our panel: bar label at the last step
        panel.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS/'jupyterlab_progress.png'), full_page=True)
        (ARTIFACTS/'jupyterlab_panel.html').write_text(panel.evaluate('e => e.outerHTML'))
        assert panel.locator('.progress-bar').count() == 1 and panel.locator('.progress-bar').is_visible()
        assert 'success' in panel.locator('.progress-bar').get_attribute('class')          # bar_style='success' at the end
        assert panel.locator('table th', has_text='loss').count() >= 1                      # the metrics table
        cell = page.locator('.jp-CodeCell').filter(has=panel)
        img = cell.locator('.jp-OutputArea-output img')   # redrawn in the panel while training; at the end, the static figure below it
        assert img.count() == 1 and img.evaluate('i => i.naturalWidth') >= 600                # the loss plot: one figure, drawn
        assert page.get_by_text('<Figure size').count() == 0                                 # not the Figure's text repr

def test_chat_in_jupyterlab(tmp_path, data_dir):
    write_notebook(tmp_path/'chat.ipynb', CHAT_CELLS)
    with jupyterlab(tmp_path, data_dir) as run_notebook:
        page = run_notebook('chat.ipynb')
        page.wait_for_selector('text=CHAT READY', timeout=120_000)
        box = page.locator('.widget-text input[placeholder^="Message"]')   # the chat's prompt box: the widget, not a text fallback
        box.wait_for(timeout=30_000)
        box.fill('What is the capital of France?')
        page.get_by_role('button', name='Send').click()
        page.wait_for_function("""() => {
            const cells = [...document.querySelectorAll('table.ft-nb-compare td.ft-nb-base, table.ft-nb-compare td.ft-nb-tuned')];
            const send = [...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'Send');
            return cells.length === 2 && cells.every(c => c.textContent.trim()) && send && !send.disabled; }""", timeout=60_000)
        table = page.locator('table.ft-nb-compare')
        table.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS/'jupyterlab_chat.png'), full_page=True)
        (ARTIFACTS/'jupyterlab_chat.html').write_text(table.evaluate('e => e.outerHTML'))
        assert table.count() == 1
        assert table.locator('thead th').all_inner_texts() == ['base (adapter off)', 'fine-tuned (adapter on)']
        assert 'What is the capital of France?' in table.locator('td.ft-nb-user').inner_text()
        base, tuned = table.locator('td.ft-nb-base').inner_text().strip(), table.locator('td.ft-nb-tuned').inner_text().strip()
        assert base and tuned and base != tuned                                           # two answers; the adapter changes them
        assert box.input_value() == ''                                                     # the box is emptied for the next prompt
