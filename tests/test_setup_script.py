import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_setup_script_reports_and_passes():
    out = subprocess.run([sys.executable, str(ROOT / "test_setup.py")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[  ok   ] torch" in out.stdout and "forward/backward" in out.stdout
    assert "all required checks passed" in out.stdout
    assert "sk-" not in out.stdout
