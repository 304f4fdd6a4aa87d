"""The live progress panel in a real JupyterLab, driven by headless Chromium (Debian's `chromium`, through Playwright).

A notebook that fine-tunes a tiny model with `progress='notebook'` is run in the browser; the test waits for the run
to end and checks that the widget panel rendered: a progress bar that reached the last step, the metrics table, and
the loss plot as an image. The screenshot is kept in tests/artifacts/jupyterlab_progress.png."""
import json, os, shutil, socket, subprocess, sys, time, urllib.request
from pathlib import Path

CHROMIUM = shutil.which('chromium') or '/usr/bin/chromium'
ARTIFACTS = Path(__file__).parent/'artifacts'

CELLS = [
    "import tempfile\nfrom ft_nb.testing import quiet, tiny_llama\nquiet()\n"
    "from ft_nb.models import load_model\nfrom ft_nb.train import finetune",
    "model, tok = load_model(tiny_llama(), quant=None)",
    "res = finetune(model, tok, {data!r}, output_dir=tempfile.mkdtemp(), method='lora', max_steps=12, logging_steps=2, max_length=64,\n"
    "               per_device_train_batch_size=2, gradient_accumulation_steps=1, save_strategy='no', progress='notebook')",
    "print('RUN', 'FINISHED', res.steps)",
]

def _notebook(path, data_dir):
    src = [c.format(data=str(data_dir/'datasets'/'alpaca_en_demo.json')) for c in CELLS]
    nb = {'cells': [{'cell_type': 'code', 'execution_count': None, 'id': f'c{i}', 'metadata': {}, 'outputs': [], 'source': s}
                    for i, s in enumerate(src)],
          'metadata': {'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'}}, 'nbformat': 4, 'nbformat_minor': 5}
    path.write_text(json.dumps(nb))

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _wait_http(url, timeout=90):
    end = time.time() + timeout
    while time.time() < end:
        try: return urllib.request.urlopen(url, timeout=5).status
        except Exception: time.sleep(1)
    raise TimeoutError(f'JupyterLab did not answer at {url}')

def test_progress_panel_renders_in_jupyterlab(tmp_path, data_dir):
    from playwright.sync_api import sync_playwright
    assert Path(CHROMIUM).exists(), "Chromium is needed (Debian: apt-get install chromium); .ci/run installs it"
    _notebook(tmp_path/'train.ipynb', data_dir)
    port, token = _free_port(), 'ft-nb-test'
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'JUPYTER_PLATFORM_DIRS': '1', 'FT_NB_DATA': str(data_dir)}   # the kernel runs in tmp_path
    lab = subprocess.Popen([sys.executable, '-m', 'jupyterlab', '--no-browser', f'--port={port}', '--ServerApp.ip=127.0.0.1',
                            f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={tmp_path}', '--LabApp.expose_app_in_browser=True',
                            '--allow-root'], env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path/'lab.log', 'w'))
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        _wait_http(f'http://127.0.0.1:{port}/api/status?token={token}')
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=['--no-sandbox'])
            page = browser.new_page(viewport={'width': 1400, 'height': 1600})
            page.goto(f'http://127.0.0.1:{port}/lab/tree/train.ipynb?token={token}')
            page.wait_for_selector('.jp-Notebook', timeout=120_000)
            page.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget && "
                                   "window.jupyterapp.shell.currentWidget.sessionContext.session?.kernel?.status === 'idle'", timeout=120_000)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
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
            browser.close()
    finally:
        lab.terminate()
        try: lab.wait(20)
        except subprocess.TimeoutExpired: lab.kill()
