"""``python -m ml``: see ml/cli.py. OMP_WAIT_POLICY must be set before torch loads OpenMP (small VMs
otherwise stall for seconds in spinning threads), so it is set here, before anything imports torch; so are the
libraries' progress bars and known harmless warnings (ml.reporter.quiet_libraries), before they are imported."""

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from ml.reporter import quiet_libraries  # noqa: E402

quiet_libraries()

from ml.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
