"The installed `ft_nb` command, as a user runs it."
import shutil, subprocess

def ft_nb(*args):
    exe = shutil.which('ft_nb')
    assert exe, 'the ft_nb console script is not installed (pip install -e .)'
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)

def test_help():
    r = ft_nb('--help')
    assert r.returncode == 0 and 'estimate' in r.stdout

def test_demo_is_the_main_job(tmp_path):
    "`ft_nb demo` as the README runs it, from an empty folder: offline, learns, stops, writes its files."
    import json, os
    exe = shutil.which('ft_nb')
    r = subprocess.run([exe, 'demo'], capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path/'ft_nb_demo'
    m = json.loads((out/'metrics.json').read_text())
    assert m['eval_loss_after'] <= 0.5 * m['eval_loss_before'], m
    assert m['eos_rate'] >= 0.9, m['samples']
    assert {'adapter_model.safetensors', 'adapter_config.json', 'loss.png'} <= {p.name for p in out.iterdir()}
    assert 'of the answers ended with EOS' in r.stdout
    print(f"ft_nb demo: {m['seconds']} s, eval loss {m['eval_loss_before']:.3f} -> {m['eval_loss_after']:.3f}")
