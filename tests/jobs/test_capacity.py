"""Worker capacity (jobs.workers, jobs.services.dispatch): a job training on N devices goes to the queue only a
worker with N devices consumes, waits there with a visible reason while no live worker has them, and what a
deployment cannot run at all (QLoRA without CUDA, ZeRO-3 without DeepSpeed) is refused at submit."""

from __future__ import annotations

import importlib.util
import time

import pytest
import redis as redis_lib
from rest_framework.test import APIClient

from jobs import services, workers
from jobs.models import Job, JobEvent
from tests.jobs.conftest import finished_job, make_prompts, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_job_on_n_devices_has_its_own_queue_and_a_worker_consumes_those_it_can_hold():
    assert workers.queue_for(1) == workers.GENERATION_QUEUE == "gpu"
    assert workers.queue_for(4) == "gpu-x4"
    assert workers.capacity_queues(1) == []
    assert workers.capacity_queues(4) == ["gpu-x2", "gpu-x3", "gpu-x4"]


def test_the_reason_follows_the_live_workers(registry):
    assert workers.waiting_reason(1) == ""  # one device: any worker
    assert workers.waiting_reason(4).startswith("waiting for a worker with 4 GPUs (the live workers have at most 0)")
    workers.announce("two@h", ["gpu", "gpu-x2"], 2)
    assert workers.waiting_reason(2) == ""
    assert "at most 2" in workers.waiting_reason(4)
    workers.announce("four@h", ["gpu", "gpu-x2", "gpu-x3", "gpu-x4"], 4)
    assert workers.waiting_reason(4) == ""
    # A worker that announces devices but does not consume the queue (started with -Q default) takes nothing.
    workers.withdraw("four@h")
    workers.announce("busy@h", ["default"], 8)
    assert "waiting for a worker with 4 GPUs" in workers.waiting_reason(4)


def _weak_align_body(weak_pair, user, **params):
    ds = services.dataset_create(
        name=f"p-{time.monotonic_ns()}", chunks=[make_prompts(4)], gold="toy:review", owner=user
    )
    return {
        "kind": "weak_align",
        "weak_base": weak_pair[0].pk,
        "prompts": ds.pk,
        "params": {"max_prompts": 4, "max_new_tokens": 4, "k": 2, "weak_align": {"max_steps": 2}, **params},
    }


def _api(user) -> APIClient:
    c = APIClient()
    c.force_authenticate(user)
    return c


@pytest.mark.slow  # a real worker runs a job beside the waiting one
def test_a_job_needing_4_gpus_stays_queued_with_its_reason_while_the_worker_runs_others(
    user, weak_pair, shared_celery_worker, redis_url, client
):
    assert shared_celery_worker.alive()
    api = _api(user)
    res = api.post("/api/v1/jobs/", _weak_align_body(weak_pair, user, gpus=4), format="json")
    assert res.status_code == 201, res.content
    big = res.json()["id"]
    # A job sent after it, that the (0-device) worker can take: once it finished, the worker was free all along.
    wb, wa = weak_pair
    cd = {
        "kind": "cd_generate",
        "weak_base": wb.pk,
        "weak_aligned": wa.pk,
        "prompts": res.json()["config"]["prompts"]["id"],
    }
    small = api.post("/api/v1/jobs/", {**cd, "params": {"max_new_tokens": 4}}, format="json").json()["id"]
    wait_for(lambda: finished_job(small), 240, what="the one-device job to finish")
    assert Job.objects.get(pk=small).status == "succeeded", Job.objects.get(pk=small).error
    job = Job.objects.get(pk=big)
    assert job.status == "queued" and job.attempts == 0
    assert job.waiting_for.startswith("waiting for a worker with 4 GPUs")
    assert redis_lib.Redis.from_url(redis_url).llen("gpu-x4") == 1  # the message waits in the broker
    assert api.get(f"/api/v1/jobs/{big}/").json()["waiting_for"] == job.waiting_for
    assert JobEvent.objects.filter(job_id=big, type="log", data__message=job.waiting_for).count() == 1
    client.force_login(user)
    page = client.get(f"/jobs/{big}/").content.decode()
    assert 'id="waiting-for"' in page and "waiting for a worker with 4 GPUs" in page
    # The reaper keeps the reason true: a 4-device worker appears (announced), the reason goes; it leaves, back.
    workers.announce("four@elsewhere", ["gpu", "gpu-x2", "gpu-x3", "gpu-x4"], 4)
    services.jobs_reap_stale(send=False)
    assert Job.objects.get(pk=big).waiting_for == ""
    workers.withdraw("four@elsewhere")
    services.jobs_reap_stale(send=False)
    assert Job.objects.get(pk=big).waiting_for.startswith("waiting for a worker with 4 GPUs")
    services.job_cancel(job=Job.objects.get(pk=big))  # leaves nothing for the next test's worker


@pytest.mark.parametrize(
    ("params", "path", "message"),
    [
        ({"gpus": 0}, "params.gpus", "must be a whole number >= 1"),
        ({"gpus": 9}, "params.gpus", "must be at most 8"),
        ({"distributed": "zero9"}, "params.distributed", "unknown distributed mode 'zero9'"),
    ],
)
def test_bad_device_settings_are_refused_by_name(user, weak_pair, registry, params, path, message):
    res = _api(user).post("/api/v1/jobs/", _weak_align_body(weak_pair, user, **params), format="json")
    assert res.status_code == 400
    assert message in " ".join(res.json()[path])


def test_device_settings_apply_to_the_training_kinds_only(user, weak_pair, prompts_ds, registry):
    wb, wa = weak_pair
    body = {"kind": "cd_generate", "weak_base": wb.pk, "weak_aligned": wa.pk, "prompts": prompts_ds.pk}
    res = _api(user).post("/api/v1/jobs/", {**body, "params": {"gpus": 2}}, format="json")
    assert res.status_code == 400
    assert res.json()["params.gpus"] == ["gpus applies to kinds cong, train, weak_align, not cd_generate"]


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="DeepSpeed is installed here")
def test_zero3_without_deepspeed_is_a_400_that_says_what_to_install(user, weak_pair, registry):
    res = _api(user).post("/api/v1/jobs/", _weak_align_body(weak_pair, user, distributed="zero3"), format="json")
    assert res.status_code == 400
    assert "DeepSpeed, which is not installed here (pip install deepspeed)" in " ".join(
        res.json()["params.distributed"]
    )
    assert not Job.objects.exists()


def _sort_model(path) -> None:
    """A tiny model speaking the toy sort world, whose gold reward (toy:sort) every worker process knows."""
    from ml.tiny import tiny_gpt2, word_tokenizer
    from ml.toyworld.worlds.sort import DIGITS, STYLE

    tok = word_tokenizer(["sort", ":", ".", STYLE, *DIGITS])
    tiny_gpt2(len(tok), n_layer=1, n_embd=32, n_head=2, n_positions=64, seed=5).save_pretrained(str(path))
    tok.save_pretrained(str(path))


@pytest.mark.slow  # a worker of its own runs a weak alignment on two processes
def test_a_worker_with_two_devices_takes_a_two_gpu_job_and_trains_it_on_two_processes(
    user, model_root, worker_env, tmp_path
):
    from jobs.services import model_register
    from tests.jobs.conftest import WorkerProc

    if not (model_root / "sort").exists():
        _sort_model(model_root / "sort")
    base = model_register(name="sort", path=str(model_root / "sort"), kind="weak", owner=user)
    rows = "".join(f'{{"prompt": "sort {" ".join(d)} :"}}\n' for d in ("312", "975", "040", "821", "563", "190"))
    ds = services.dataset_create(name="sort-prompts", chunks=[rows.encode()], gold="toy:sort", owner=user)
    worker = WorkerProc({**worker_env, "WORKER_GPUS": "2"}, tmp_path / "worker2.log")
    worker.start()
    try:
        params = {
            "gpus": 2,
            "k": 4,
            "max_new_tokens": 6,
            "weak_align": {"max_steps": 2, "max_examples": 4, "max_length": 64},
        }
        res = _api(user).post(
            "/api/v1/jobs/",
            {"kind": "weak_align", "weak_base": base.pk, "prompts": ds.pk, "params": params},
            format="json",
        )
        assert res.status_code == 201, res.content
        job_id = res.json()["id"]
        assert Job.objects.get(pk=job_id).waiting_for == ""  # a live worker has 2 devices
        job = wait_for(lambda: finished_job(job_id), 300, what="the two-device job to finish")
        assert job.status == "succeeded", job.error + worker.tail()
        assert (job.results["world_size"], job.results["distributed"], job.results["steps"]) == (2, "ddp", 2)
        logs = [e.data.get("message", "") for e in JobEvent.objects.filter(job_id=job_id, type="log")]
        assert "weak_align: training on 2 process(es), ddp" in logs
        # The ranks' progress reached the job's bar through the launcher.
        bars = JobEvent.objects.filter(job_id=job_id, type="progress", data__stage="weak_align")
        assert bars.filter(data__done=2, data__total=2).exists()
        assert "gpu-x2" in worker.log_text()  # the queue it added for itself (celery lists its queues at start)
    finally:
        worker.discard()


def test_qlora_on_a_cpu_deployment_is_a_400_that_follows_the_workers(user, weak_pair, registry):
    qlora = {"weak_align": {"max_steps": 2, "lora_r": 8, "load_in_4bit": True}}
    workers.announce("cpu@h", ["gpu"], 0, cuda=False)
    res = _api(user).post("/api/v1/jobs/", _weak_align_body(weak_pair, user, **qlora), format="json")
    assert res.status_code == 400
    assert res.json()["params.weak_align.load_in_4bit"] == [
        "QLoRA (load_in_4bit) needs a CUDA GPU and this deployment has none; use LoRA (lora_r > 0) without "
        "load_in_4bit, or run on a GPU worker"
    ]
    # A CUDA worker joins: the GPU rule is met; what is left is the package (absent on this machine).
    workers.announce("cuda@h", ["gpu"], 1, cuda=True)
    res = _api(user).post("/api/v1/jobs/", _weak_align_body(weak_pair, user, **qlora), format="json")
    if importlib.util.find_spec("bitsandbytes") is None:
        assert res.json()["params.weak_align.load_in_4bit"] == [
            "QLoRA (load_in_4bit) needs the bitsandbytes package (pip install bitsandbytes)"
        ]
    else:
        assert res.status_code == 201, res.content
    assert not Job.objects.filter(status="queued").exclude(config__params__weak_align__load_in_4bit=True).exists()


def test_fsdp_needs_a_cuda_worker_and_qlora_does_not_shard(user, weak_pair, registry):
    workers.announce("cpu@h", ["gpu"], 2, cuda=False)
    res = _api(user).post("/api/v1/jobs/", _weak_align_body(weak_pair, user, gpus=2, distributed="fsdp"), format="json")
    assert res.status_code == 400
    assert res.json()["params.distributed"] == [
        "fsdp shards the model across CUDA GPUs and this deployment has none; use ddp"
    ]
    # The job's mode reaches its training configs when the spec is checked: QLoRA under fsdp is refused by name.
    workers.announce("cuda@h", ["gpu", "gpu-x2"], 2, cuda=True)
    qlora = {"weak_align": {"lora_r": 8, "load_in_4bit": True}}
    res = _api(user).post(
        "/api/v1/jobs/", _weak_align_body(weak_pair, user, gpus=2, distributed="fsdp", **qlora), format="json"
    )
    assert res.status_code == 400
    assert res.json() == {
        "params.weak_align.load_in_4bit": ["load_in_4bit (QLoRA) runs in one process or several in ddp, not fsdp"]
    }
