"""`make serve` and `make demo`: one foreground command that owns every process it starts.

serve: embedded Redis (unless REDIS_URL is set) -> migrate -> the web tier (congweb.web: WEB_CONCURRENCY
ASGI processes), one Celery worker and celery beat, until Ctrl-C. demo: the same, plus the toy world, a demo
user, one ConG job submitted over the REST API and followed in the terminal from the job's events, then the
results table.

Every child is supervised (congweb.supervisor): one that dies is restarted with backoff and the
rest keep running; none outlives the launcher, even one killed with SIGKILL.

Children get REDIS_URL explicitly, so they talk to the server this process started instead of each
starting their own. Logs go to VAR_DIR/logs/ so the terminal stays readable.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from congweb.supervisor import ROOT, Stack, say


def debug_notice() -> None:
    """One line when DEBUG is on: it shows tracebacks and settings to anyone who hits an error."""
    from django.conf import settings

    if settings.DEBUG:
        say(
            "DEBUG is on (the development default): fine for this local stack, never in production. "
            "Turn it off with DEBUG=0 in the environment (then SECRET_KEY must be set too), or run with "
            "DJANGO_SETTINGS_MODULE=congweb.settings.production"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m congweb.launcher", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("mode", choices=["serve", "demo"])
    ap.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8000)))
    ap.add_argument("--exit", action="store_true", help="demo: exit after printing the results table")
    args = ap.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "congweb.settings")
    # SIGTERM (docker stop, timeout, a supervisor) must clean up like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    var_dir = Path(os.environ.get("VAR_DIR", ROOT / "var")).resolve()
    stack = Stack(args.port, var_dir)
    try:
        stack.start_redis()
        os.environ["REDIS_URL"] = stack.env.get("REDIS_URL", os.environ.get("REDIS_URL", ""))
        stack.run("manage.py", "migrate", "--noinput", "-v0", what="database migration")
        debug_notice()
        if args.mode == "demo":
            from congweb import demo

            code = demo.run(stack, exit_after=args.exit)
            if args.exit:
                return code
        else:
            stack.start_services()
        say(f"dashboard: http://127.0.0.1:{args.port}/  (Ctrl-C stops everything)")
        while True:
            stack.tick()
            time.sleep(0.5)
    except KeyboardInterrupt:
        say("stopping")
        return 0
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
