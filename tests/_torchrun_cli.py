"""Run several ``ann2snn`` commands in one torchrun launch (one process group, one start-up):
``torchrun ... tests/_torchrun_cli.py table ARGS -- convert ARGS``.  Used by test_distributed.py
to save a launch; each command goes through ``ann2snn.app.cli.main`` exactly as ``-m ann2snn`` does."""
import sys

from ann2snn.app.cli import main

if __name__ == "__main__":
    commands, current = [], []
    for tok in sys.argv[1:]:
        if tok == "--":
            commands.append(current)
            current = []
        else:
            current.append(tok)
    commands.append(current)
    for argv in commands:
        rc = main(argv)
        if rc:
            raise SystemExit(rc)
