"""congweb's ML core: contrastive decoding and the ConG training stages.

This package never imports Django, Celery or anything of the web app: every stage takes a plain
dataclass config and an optional reporter (see ``ml.reporter``) and can run from the CLI
(``python -m ml --help``) or from a test.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
