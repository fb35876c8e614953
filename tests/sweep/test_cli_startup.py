"""The command answers at once: ``--help`` and ``--version`` import none of the heavy libraries,
``status`` without a sweep imports no torch."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

from fp4sweep import __version__
from fp4sweep.sweep.runner import PROJECT_ROOT

HEAVY = ("hydra", "pandas", "pyarrow", "ray", "torch", "triton")


def imported_after(argv: list[str]) -> tuple[str, list[str]]:
    """What ``fp4sweep ARGV`` prints, and which of HEAVY it imported, in a fresh interpreter."""
    probe = (
        "import sys\nfrom fp4sweep.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                          cwd=PROJECT_ROOT, check=True)
    *printed, modules = done.stdout.strip().splitlines()
    return "\n".join(printed), ast.literal_eval(modules)


def test_help_and_version_import_nothing_heavy():
    printed, modules = imported_after(["--version"])
    assert printed == f"fp4sweep {__version__}" and modules == []
    printed, modules = imported_after(["--help"])
    assert "usage: fp4sweep" in printed and modules == []


def test_status_without_a_sweep_imports_no_torch(tmp_path):
    (tmp_path / "trials").mkdir()  # an empty store
    printed, modules = imported_after(["status", f"results_dir={tmp_path}"])
    assert "no trials" in printed and "torch" not in modules
