"""Fault tests reuse the jobs fixtures (real worker, tiny models, file-backed test DB)."""

from tests.jobs.conftest import *  # noqa: F401,F403
from tests.jobs.conftest import pytest_configure as _jobs_configure


def pytest_configure(config):
    _jobs_configure(config)


SLOW_N = 120  # prompts; at batch_size 1 and 16 forced tokens a tiny model takes ~60 ms each: a ~8 s job


def slow_cd_job(user, weak_pair, n=SLOW_N, **kw):
    """A cd_generate job long enough to kill a worker in the middle of it (one prompt per batch, no early EOS)."""
    from jobs import services
    from tests.jobs.conftest import make_prompts

    ds = services.dataset_create(name=f"p{n}", chunks=[make_prompts(n)], owner=user)
    wb, wa = weak_pair
    params = {"batch_size": 1, "max_new_tokens": 16, "cd_generate": {"ignore_eos": True}}
    return services.job_create(
        user=user,
        kind="cd_generate",
        weak_base=wb.pk,
        weak_aligned=wa.pk,
        prompts=ds.pk,
        alpha=0.4,
        params=params,
        **kw,
    )
