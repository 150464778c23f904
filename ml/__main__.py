"""``python -m ml``: see ml/cli.py. OMP_WAIT_POLICY must be set before torch loads OpenMP (small VMs
otherwise stall for seconds in spinning threads), so it is set here, before anything imports torch."""

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ml.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
