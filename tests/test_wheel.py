"""What a release ships, as a user gets it: the sdist and wheel built from the repository by `python -m build` (the wheel
from the sdist, so a file the sdist lacks fails here), `twine check`, then the wheel installed, not editable, into a fresh
venv, where `ft_nb --help` and `ft_nb demo` run offline.

The fresh venv gets the same torch release as this one (`torch==X.Y.Z`; pip takes it from its cache or, on the CI machine,
from disk) unless FT_NB_WHEEL_TORCH says otherwise (a requirement, or '' to let the wheel's own range choose). The venv's
Python is this one's unless FT_NB_WHEEL_PYTHON names another interpreter (CI runs this file again on Python 3.12)."""
import configparser, json, os, re, subprocess, sys
from importlib.metadata import version
from pathlib import Path
import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
PYTHON = os.environ.get('FT_NB_WHEEL_PYTHON') or sys.executable
TORCH = os.environ.get('FT_NB_WHEEL_TORCH', f"torch=={version('torch').split('+')[0]}")
RESULT = re.compile(r'^eval loss ([\d.]+) -> ([\d.]+) \([\d.]+x\); (\d+)% of the answers ended with EOS, (\d+)% were right; \d+ s\.$', re.M)

def run(*args, timeout=900, **kw):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, args))} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r

@pytest.fixture(scope='module')
def dist(tmp_path_factory):
    "sdist and wheel, as the release workflow builds them."
    out = tmp_path_factory.mktemp('dist')
    run(sys.executable, '-m', 'build', '--outdir', out, ROOT)
    return out

@pytest.fixture(scope='module')
def venv(dist, tmp_path_factory):
    "A fresh venv with the wheel installed (not editable); its bin folder."
    d = tmp_path_factory.mktemp('venv')/'v'
    run(PYTHON, '-m', 'venv', d)
    wheel, = dist.glob('ft_nb-*.whl')
    run(d/'bin'/'python', '-m', 'pip', 'install', '-q', '--no-compile', *([TORCH] if TORCH else []), wheel)   # no .pyc up front: half the time
    return d/'bin'

def user_env(): return {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'VIRTUAL_ENV')} | {'HF_HUB_OFFLINE': '1'}

def test_twine_check(dist):
    files = sorted(p.name for p in dist.iterdir())
    assert len(files) == 2 and files[0].endswith('-py3-none-any.whl') and files[1].endswith('.tar.gz'), files
    out = run(sys.executable, '-m', 'twine', 'check', '--strict', *sorted(dist.iterdir())).stdout
    assert out.count('PASSED') == 2, out

def test_wheel_is_what_runs(venv, tmp_path):
    "The venv imports ft_nb from its own site-packages: the wheel, not this checkout."
    r = run(venv/'python', '-c', 'import ft_nb, json; print(json.dumps([ft_nb.__file__, ft_nb.__version__]))', cwd=tmp_path, env=user_env())
    path, v = json.loads(r.stdout)
    assert Path(path).is_relative_to(venv.parent) and 'site-packages' in path, path
    cfg = configparser.ConfigParser(); cfg.read(ROOT/'settings.ini')
    assert v == cfg['DEFAULT']['version'], v

def test_help(venv, tmp_path):
    out = run(venv/'ft_nb', '--help', cwd=tmp_path, env=user_env()).stdout
    assert all(c in out for c in ('demo', 'estimate', 'merge', 'train')), out

def test_demo(venv, tmp_path):
    "`ft_nb demo` from the installed wheel, as the README runs it from an empty folder: offline, learns, stops, writes its files."
    r = run(venv/'ft_nb', 'demo', cwd=tmp_path, env=user_env(), timeout=900)
    m = RESULT.search(r.stdout)
    assert m, r.stdout[-2000:]
    before, after, eos, right = float(m[1]), float(m[2]), int(m[3]), int(m[4])
    assert after <= 0.5 * before and eos >= 90, m[0]
    assert {'adapter_model.safetensors', 'adapter_config.json', 'loss.png', 'metrics.json'} <= {p.name for p in (tmp_path/'ft_nb_demo').iterdir()}
    print(f'wheel on Python {PYTHON}: {m[0]}')
    merged = run(venv/'ft_nb', 'merge', 'ft_nb_demo', '--out', 'merged', cwd=tmp_path, env=user_env(), timeout=600)   # the README's next step, with defaults
    rep = json.loads((tmp_path/'merged'/'merge_report.json').read_text())
    assert rep['mode'] == 'nf4' and rep['dtype'] == 'bfloat16', rep
    print(f"demo merged with defaults: {merged.stdout.strip()}")
    pref = run(venv/'ft_nb', 'demo', '--prefer', '--sft', 'ft_nb_demo', '--quiet', cwd=tmp_path, env=user_env(), timeout=900)   # the preference demo, from this SFT demo
    mp = json.loads((tmp_path/'ft_nb_demo_prefer'/'metrics.json').read_text())
    assert mp['reward_accuracy'] >= 0.9 and mp['style_before'] <= 0.1 and mp['style_after'] >= 0.8, {k: mp[k] for k in ('reward_accuracy', 'style_before', 'style_after')}
    print(f"preference demo: {pref.stdout.strip().splitlines()[-2]}")
