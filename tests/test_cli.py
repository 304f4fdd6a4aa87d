"The installed `ft_nb` command, as a user runs it (`ft_nb demo` from the installed wheel: tests/test_wheel.py)."
import shutil, subprocess

def ft_nb(*args):
    exe = shutil.which('ft_nb')
    assert exe, 'the ft_nb console script is not installed (pip install -e .)'
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)

def test_help():
    r = ft_nb('--help')
    assert r.returncode == 0 and 'estimate' in r.stdout
