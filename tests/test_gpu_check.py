"""bench/gpu_check.py, the GPU check, kept runnable without a GPU: its `--cpu-smoke` run of the environment and notebook checks (the
notebook runner, its cell selection by flags, the report and table), and the directive parser. The whole smoke run (every check on
the CPU with tiny sizes) takes about 11 minutes on 2 cores, so it is run by hand: `python bench/gpu_check.py --cpu-smoke --out DIR`."""
import json, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'bench'))
import gpu_check

def test_directives():
    assert gpu_check._directives('#| slow\n#| eval: false\nx = 1\n#| cuda') == {'slow': '', 'eval': 'false'}
    assert gpu_check._directives('#| hide\nimport os') == {'hide': ''}
    assert gpu_check._directives('x = 1') == {}
    assert {'slow', 'cuda'} <= gpu_check._tst_flags()

@pytest.mark.slow
def test_cpu_smoke_env_and_notebook(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT/'bench'/'gpu_check.py'), '--cpu-smoke', '--only', 'env,notebook', '--out', str(tmp_path)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = json.loads((tmp_path/'gpu_check.json').read_text())
    assert rep['meta']['mode'] == 'cpu smoke' and [c['status'] for c in rep['checks'].values()] == ['pass', 'pass']
    nb = rep['checks']['notebook']
    assert nb['ran'] >= 3 and nb['skipped'] >= 10 and not nb['errors'] and nb['not_on_cpu']
    executed = json.loads((tmp_path/'qlora_colab.ipynb').read_text())
    assert any('FT_NB_MODEL' in ''.join(c['source']) for c in executed['cells'])
    assert '| notebook | pass |' in (tmp_path/'gpu_check.md').read_text() and '| notebook | pass |' in r.stdout
