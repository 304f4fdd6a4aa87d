"The installed `ft_nb` command, as a user runs it."
import shutil, subprocess

def ft_nb(*args):
    exe = shutil.which('ft_nb')
    assert exe, 'the ft_nb console script is not installed (pip install -e .)'
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)

def test_estimate_prints_the_table():
    r = ft_nb('estimate', 'llama2-7b', '--method', 'qlora', '--seq-len', '512', '--batch-size', '4')
    assert r.returncode == 0, r.stderr
    assert '| weights | 3.87 |' in r.stdout and '| T4 (16 GB) | no | gradient checkpointing on |' in r.stdout

def test_bad_model_is_one_line(tmp_path):
    r = ft_nb('estimate', str(tmp_path))
    assert r.returncode == 1 and 'has no config.json' in r.stderr and 'Traceback' not in r.stderr

def test_help():
    r = ft_nb('--help')
    assert r.returncode == 0 and 'estimate' in r.stdout
