#!/usr/bin/env python
"""Django's command-line utility for congweb."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "congweb.settings")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch threads stall on small VMs without it
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
