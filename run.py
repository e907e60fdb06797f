"""`python run.py ...` from a checkout is the `varbench` command (varbench/cli.py)."""

from varbench.cli import main

if __name__ == "__main__":
    main()
