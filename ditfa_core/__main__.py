"""``python -m ditfa_core`` and the ``ditfa`` console script: see ``ditfa_core.cli``."""

import importlib.util
import sys


def main() -> int:
    """Check that torch is importable (the pack never installs it), then run the command line."""
    if importlib.util.find_spec("torch") is None:
        sys.stderr.write("ditfa: error: PyTorch is not installed in this environment. The pack never "
                         "installs it: use ComfyUI's environment, a venv made with "
                         "--system-site-packages, or `pip install torch` yourself.\n")
        return 1
    from .cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
