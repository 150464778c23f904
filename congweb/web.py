"""The web tier: gunicorn running settings.WEB_CONCURRENCY uvicorn worker processes, each serving
congweb.asgi (HTTP through Django, websockets through Channels).

One command for every way the web tier is started (`make serve`/`make demo` through congweb.supervisor,
`make web`, the docker image, bench/api_load.py, the tests)::

    python -m congweb.web --bind 127.0.0.1:8000 [--workers N]

Why several processes: Django runs sync views on one thread per ASGI process, so one process serves one
request at a time (~100/s for the job list); N processes serve N at once. Websockets work on any of them
because the channel layer is Redis (settings.CHANNEL_LAYERS), shared by every process and the workers.

The gunicorn master imports the app once (--preload) and forks the workers from it; it serves no request
itself, only watches and restarts them. Before gunicorn starts, this module starts the embedded Redis when
settings say there is no other (as the asgi module would), before anything could race to start one.
"""

from __future__ import annotations

import argparse
import os
import sys

from uvicorn_worker import UvicornWorker as _BaseWorker

from congweb.parent_death import exit_with_parent

APP = "congweb.asgi:application"
# Under the supervisor's STOP_GRACE_S (15 s): a stop that waits for in-flight requests still ends in time.
GRACEFUL_TIMEOUT_S = 10


class UvicornWorker(_BaseWorker):
    """uvicorn in a gunicorn worker, with the settings this app needs:

    - proxy_headers off: uvicorn would otherwise take X-Forwarded-For/-Proto from any client on 127.0.0.1
      as the peer's address and scheme. Whom to believe is the app's call (settings.TRUSTED_PROXY), as it
      was under daphne, which does not read them either;
    - lifespan off: Django has no startup/shutdown hooks (Channels' router would refuse the scope);
    - websockets through the websockets package's sans-I/O protocol (the non-deprecated one);
    - the worker dies with its master: if the master is SIGKILLed (its launcher died), no worker lives on
      holding the port.
    """

    CONFIG_KWARGS = {
        "loop": "auto",
        "http": "auto",
        "ws": "websockets-sansio",
        "lifespan": "off",
        "proxy_headers": False,
        "server_header": False,
    }

    def init_process(self) -> None:
        exit_with_parent(self.ppid)
        super().init_process()


def web_concurrency() -> int:
    """settings.WEB_CONCURRENCY (the environment's WEB_CONCURRENCY, or the default declared there)."""
    from django.conf import settings

    return int(settings.WEB_CONCURRENCY)


def argv(bind: str, workers: int | None = None) -> list[str]:
    """The gunicorn command line (after the interpreter) serving ``bind`` with ``workers`` processes."""
    return [
        "-m",
        "gunicorn",
        APP,
        "--worker-class",
        "congweb.web.UvicornWorker",
        "--workers",
        str(workers or web_concurrency()),
        "--bind",
        bind,
        # The master imports the app once (congweb.asgi: Django, every view, torch through the API's schema) and
        # forks the workers from it: they share those pages instead of each importing ~350 MB again, and a
        # worker restart is a fork, not a 5-second import.
        "--preload",
        "--graceful-timeout",
        str(GRACEFUL_TIMEOUT_S),
        # gunicorn's control socket sits at one path per user (~/.gunicorn): two servers (tests, the bench,
        # two stacks) would fight over it, and nothing here uses it.
        "--no-control-socket",
    ]


def main(args: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m congweb.web", description=__doc__)
    ap.add_argument("--bind", default=f"127.0.0.1:{os.environ.get('PORT', 8000)}", help="HOST:PORT or unix:PATH")
    ap.add_argument("--workers", type=int, default=None, help="default: settings.WEB_CONCURRENCY")
    ns = ap.parse_args(args)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "congweb.settings")
    from congweb.embedded import ensure_embedded_redis

    ensure_embedded_redis()
    cmd = [sys.executable, *argv(ns.bind, ns.workers)]
    os.execv(cmd[0], cmd)  # gunicorn takes this process's place: signals and exit code are its own
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
