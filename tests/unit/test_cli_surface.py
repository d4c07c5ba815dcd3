"""The CLI's surface: every command is listed by `bastion --help`, whose import stays torch-free."""

from __future__ import annotations

import subprocess
import sys

COMMANDS = ("models", "hardware", "estimate", "validate", "plan", "train", "launch", "status", "logs", "report",
            "cost", "simulate", "demo", "data")


def test_help_lists_every_command_without_importing_torch() -> None:
    code = ("import sys\nfrom bastion.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as exc:\n    code = exc.code\n"
            "print('TORCH', 'torch' in sys.modules, code)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    listed = {line.split()[0] for line in proc.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert set(COMMANDS) <= listed
    assert proc.stdout.strip().endswith("TORCH False 0")


def test_every_command_has_help() -> None:
    for name in COMMANDS:
        proc = subprocess.run([sys.executable, "-m", "bastion", name, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0, (name, proc.stderr)
        assert "Usage: " in proc.stdout
