"""The worker registry (jobs.workers) on the real Redis: who is alive, on which queues, with how many devices,
and the torch threads a task takes when workers share a host."""

from __future__ import annotations

import os

from jobs import workers


def test_live_lists_announced_workers_by_queue_until_they_withdraw(registry):
    workers.announce("a@h1", ["default", "gpu"], 0)
    workers.announce("b@h1", ["gpu"], 2)
    workers.announce("c@h2", ["default"], 0)
    assert [w["name"] for w in workers.live()] == ["a@h1", "b@h1"]  # the generation queue
    assert [w["name"] for w in workers.live("default")] == ["a@h1", "c@h2"]
    assert [w["name"] for w in workers.live("")] == ["a@h1", "b@h1", "c@h2"]
    assert workers.live()[1]["gpus"] == 2
    assert 0 < registry.ttl(workers.PREFIX + "a@h1") <= workers.TTL  # a killed worker drops out by itself
    workers.withdraw("a@h1")
    assert [w["name"] for w in workers.live()] == ["b@h1"]


def test_workers_sharing_a_host_share_its_cores(registry, monkeypatch):
    monkeypatch.delenv("WORKER_TORCH_THREADS", raising=False)
    cores = os.cpu_count() or 1
    workers.announce("a@h1", ["gpu"], 0)
    assert workers.torch_threads("a@h1") == cores  # alone on its host: every core
    workers.announce("b@h1", ["gpu"], 0)
    workers.announce("c@h2", ["gpu"], 0)  # another host does not count
    assert workers.torch_threads("a@h1") == max(1, cores // 2)
    monkeypatch.setenv("WORKER_TORCH_THREADS", "3")
    assert workers.torch_threads("a@h1") == 3


def test_device_count_is_worker_gpus_when_set(monkeypatch):
    monkeypatch.setenv("WORKER_GPUS", "4")
    assert workers.device_count() == 4
    monkeypatch.setenv("WORKER_GPUS", "")
    import torch

    assert workers.device_count() == torch.cuda.device_count()  # else what torch sees


def test_an_unreachable_registry_is_no_worker(settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    assert workers.live() == []
