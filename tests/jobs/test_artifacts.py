"""Models out: GET /api/v1/jobs/{id}/artifacts/ lists what a job made, .../artifacts/{aid}/download/ streams a file as
it is or a model folder as a tar.gz that from_pretrained loads once unpacked (jobs.services.artifacts); only the
job's owner and staff may, and only what lies inside the job's own run folder leaves the server."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest
from django.conf import settings as dj
from django.http import StreamingHttpResponse
from rest_framework.test import APIClient

from jobs import services
from jobs.models import Artifact, Job
from jobs.runner import run_dir, run_job
from jobs.services.artifacts import CHUNK

from .conftest import save_tiny_model, tiny_cong_request

pytestmark = pytest.mark.django_db

ROW_KEYS = {"id", "stage", "kind", "path", "name", "is_folder", "size_bytes", "partial", "created", "download_url"}


def api(user) -> APIClient:
    c = APIClient()
    if user is not None:
        c.force_authenticate(user)
    return c


def url(job: Job, art: Artifact | int | None = None) -> str:
    base = f"/api/v1/jobs/{job.pk}/artifacts/"
    return base if art is None else f"{base}{getattr(art, 'pk', art)}/download/"


def body(resp) -> bytes:
    assert isinstance(resp, StreamingHttpResponse), type(resp)  # streamed: never one bytes object in the view
    return b"".join(resp.streaming_content)


def unpack(data: bytes, into: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
        tar.extractall(into, filter="data")
    return members


def job_with_model(user, stage: str = "dpo_cong") -> tuple[Job, Path, Artifact]:
    """A job whose run folder holds a trained model at <stage>/model, recorded as the runner records one."""
    job = Job.objects.create(owner=user, kind="cong", config={})
    folder = save_tiny_model(run_dir(job) / stage / "model", seed=3)
    (folder / "README.md").write_text("# a card\n")
    art = services.artifact_record(job_id=job.pk, stage="cong", kind="model", path=str(folder))
    return job, folder, art


def test_a_model_folder_downloads_as_a_tar_gz_that_from_pretrained_loads(model_root, user, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    job, folder, art = job_with_model(user)
    resp = api(user).get(url(job, art))
    assert resp.status_code == 200 and resp["Content-Type"] == "application/gzip"
    assert resp["Content-Disposition"] == f'attachment; filename="job-{job.pk}-dpo_cong-model.tar.gz"'
    members = unpack(body(resp), tmp_path / "out")
    top = f"job-{job.pk}-dpo_cong-model"
    assert {m.name.split("/")[0] for m in members} == {top}  # one folder of its own
    assert all(m.isreg() or m.isdir() for m in members)
    assert {m.name.removeprefix(top + "/") for m in members if m.isreg()} == {
        p.name for p in folder.iterdir() if p.is_file()
    }
    got = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / top)
    want = AutoModelForCausalLM.from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), want.state_dict().values(), strict=True))
    tok = AutoTokenizer.from_pretrained(tmp_path / "out" / top)
    assert tok.get_vocab() == AutoTokenizer.from_pretrained(folder).get_vocab()
    assert (tmp_path / "out" / top / "README.md").read_text() == "# a card\n"


def test_only_the_owner_and_staff_may_list_or_download(model_root, user, other_user, staff_user):
    job, _, art = job_with_model(user)
    # Another user: the 404 of a job that does not exist, the same body, nothing about the artifact.
    nobody = api(other_user).get("/api/v1/jobs/999999/artifacts/1/download/")
    for path in (url(job), url(job, art)):
        resp = api(other_user).get(path)
        assert resp.status_code == 404 and resp.json() == nobody.json(), path
    missing = api(user).get(url(job, 999999))
    assert missing.status_code == 404
    assert missing.json() == {"detail": "no such artifact, or not one that can be downloaded"}
    assert api(None).get(url(job, art)).status_code in (401, 403)
    assert api(staff_user).get(url(job, art)).status_code == 200  # staff see every job, here as everywhere
    assert [r["id"] for r in api(staff_user).get(url(job)).json()] == [art.pk]


def test_the_listing_names_each_artifact_with_its_size_and_download(model_root, user, tmp_path):
    job, folder, model = job_with_model(user)
    samples = run_dir(job) / "cd_generate" / "samples.jsonl"
    samples.parent.mkdir(parents=True)
    samples.write_bytes(b'{"prompt": "p", "response": "r"}\n')
    sample_art = services.artifact_record(job_id=job.pk, stage="cd_generate", kind="samples", path=str(samples))
    # What a pipeline records for its strong base: the input model, which is no output of the job.
    base = services.artifact_record(
        job_id=job.pk, stage="strong_base", kind="model", path=str(model_root / "weak_base")
    )
    rows = api(user).get(url(job)).json()
    assert [r["id"] for r in rows] == [model.pk, sample_art.pk, base.pk] and all(set(r) == ROW_KEYS for r in rows)
    m, s, b = rows
    assert (m["stage"], m["kind"], m["name"], m["is_folder"], m["partial"]) == (
        "cong",
        "model",
        "dpo_cong/model",
        True,
        False,
    )
    assert m["path"] == str(folder)  # the same path as GET /jobs/{id}/results/ shows
    assert m["size_bytes"] == sum(p.stat().st_size for p in folder.iterdir())
    assert m["download_url"] == f"http://testserver{url(job, model)}"
    assert (s["name"], s["is_folder"], s["size_bytes"]) == ("cd_generate/samples.jsonl", False, samples.stat().st_size)
    assert (b["name"], b["is_folder"], b["size_bytes"], b["download_url"]) == (None, None, None, None)
    assert api(user).get(url(job, base)).status_code == 404  # an input model is not downloadable from the job
    results = api(user).get(f"/api/v1/jobs/{job.pk}/results/").json()["artifacts"]
    assert [a["path"] for a in results] == [r["path"] for r in rows]


def test_a_file_artifact_downloads_as_itself(model_root, user):
    job = Job.objects.create(owner=user, kind="evaluate", config={})
    samples = run_dir(job) / "evaluate" / "samples.jsonl"
    samples.parent.mkdir(parents=True)
    data = b"".join(b'{"index": %d, "response": "r"}\n' % i for i in range(50_000))  # a few CHUNKs
    samples.write_bytes(data)
    art = services.artifact_record(job_id=job.pk, stage="evaluate", kind="samples", path=str(samples))
    resp = api(user).get(url(job, art))
    assert resp.status_code == 200 and resp["Content-Type"] == "application/octet-stream"
    assert resp["Content-Disposition"] == f'attachment; filename="job-{job.pk}-evaluate-samples.jsonl"'
    chunks = list(resp.streaming_content)
    assert b"".join(chunks) == data and max(map(len, chunks)) <= CHUNK and len(chunks) > 1


def test_a_tampered_path_downloads_nothing(model_root, user, other_user, staff_user, tmp_path):
    """Artifact.path is data: pointing it (or a link in the run folder) anywhere but inside the job's own run folder
    makes the artifact undownloadable, for staff too."""
    job, _, _ = job_with_model(user)
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    theirs, their_model, _ = job_with_model(other_user)
    link = run_dir(job) / "escape.txt"
    link.symlink_to(secret)
    dir_link = run_dir(job) / "escape_dir"
    dir_link.symlink_to(tmp_path)
    for i, path in enumerate(
        (
            secret,  # a file anywhere on the server
            their_model,  # another user's job's model
            run_dir(job) / ".." / str(theirs.pk) / "dpo_cong" / "model",  # ... reached through ..
            run_dir(job),  # the run folder itself
            link,  # a link inside the run folder, to a file outside
            dir_link,  # ... to a folder outside
            Path(f"{job.pk}/dpo_cong/model"),  # a relative path
            run_dir(job) / "nothing-here",  # gone
        )
    ):
        art = Artifact.objects.create(job=job, stage=f"t{i}", kind="model", path=str(path))
        for who in (user, staff_user):
            assert api(who).get(url(job, art)).status_code == 404, path
        (row,) = [r for r in api(user).get(url(job)).json() if r["id"] == art.pk]
        assert row["download_url"] is None and row["name"] is None, path


def test_links_inside_a_model_folder_are_left_out(model_root, user, tmp_path):
    job, folder, art = job_with_model(user)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("SECRET-OUTSIDE")
    (folder / "secret.txt").symlink_to(outside / "secret.txt")
    (folder / "linked_dir").symlink_to(outside)
    (folder / "inner_link.json").symlink_to(folder / "config.json")  # a link is left out even when it stays inside
    (folder / "sub").mkdir()
    (folder / "sub" / "kept.txt").write_text("kept")
    data = body(api(user).get(url(job, art)))
    members = unpack(data, tmp_path / "out")
    names = {m.name.split("/", 1)[1] for m in members if "/" in m.name}
    assert "sub/kept.txt" in names and "config.json" in names
    assert not names & {"secret.txt", "linked_dir", "linked_dir/secret.txt", "inner_link.json"}
    assert all(m.isreg() or m.isdir() for m in members)
    assert b"SECRET-OUTSIDE" not in gzip.decompress(data)
    # The listed size counts what the download holds: the links are not counted either.
    (row,) = api(user).get(url(job)).json()
    assert row["size_bytes"] == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _big_folder(user) -> tuple[Job, Path, Artifact]:
    """A model-sized folder in miniature: a.bin of 3 CHUNKs of incompressible bytes, then z.bin, read last."""
    job, folder, art = job_with_model(user)
    (folder / "a.bin").write_bytes(os.urandom(3 * CHUNK))
    (folder / "z.bin").write_bytes(b"before")
    return job, folder, art


def test_the_download_is_streamed_while_the_folder_is_read(model_root, user, tmp_path):
    """Structural, not timed: the first chunk is out before the last file is opened (z.bin is rewritten after the
    first chunk and the archive holds the new bytes), and no chunk is much more than CHUNK."""
    job, folder, art = _big_folder(user)
    resp = api(user).get(url(job, art))
    assert isinstance(resp, StreamingHttpResponse) and not resp.is_async
    chunks = iter(resp.streaming_content)
    first = next(chunks)
    (folder / "z.bin").write_bytes(b"after the first chunk")
    rest = list(chunks)
    assert len(rest) >= 2 and max(len(c) for c in [first, *rest]) <= 2 * CHUNK + 65536
    unpack(first + b"".join(rest), tmp_path / "out")
    assert (tmp_path / "out" / f"job-{job.pk}-dpo_cong-model" / "z.bin").read_bytes() == b"after the first chunk"


@pytest.mark.django_db(transaction=True)  # the ASGI handler runs the view in another thread
def test_under_asgi_the_download_is_an_async_stream(model_root, user, tmp_path):
    """Through Django's ASGI handler (the HTTP half of congweb.asgi, what daphne serves): the body goes out chunk by
    chunk (a synchronous iterator would be read into a list first), the first part before the last file is read."""
    from asgiref.sync import async_to_sync
    from asgiref.testing import ApplicationCommunicator
    from django.core.handlers.asgi import ASGIHandler
    from rest_framework.authtoken.models import Token

    job, folder, art = _big_folder(user)
    token = Token.objects.create(user=user)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": url(job, art),
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"authorization", f"Token {token.key}".encode())],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 5000),
    }

    async def go() -> tuple[int, bytes, int]:
        comm = ApplicationCommunicator(ASGIHandler(), scope)
        await comm.send_input({"type": "http.request", "body": b"", "more_body": False})
        start = await comm.receive_output(timeout=30)
        first = await comm.receive_output(timeout=30)
        assert first["type"] == "http.response.body" and first["more_body"], first.get("more_body")
        (folder / "z.bin").write_bytes(b"after the first part")
        data, parts = first["body"], 1
        while True:
            msg = await comm.receive_output(timeout=30)
            data += msg.get("body", b"")
            parts += 1
            if not msg.get("more_body"):
                break
        await comm.wait(timeout=30)
        return start["status"], data, parts

    status, data, parts = async_to_sync(go)()
    assert status == 200 and parts > 3
    unpack(data, tmp_path / "out")
    assert (tmp_path / "out" / f"job-{job.pk}-dpo_cong-model" / "z.bin").read_bytes() == b"after the first part"


def test_the_job_page_has_download_buttons_that_work_with_the_session(model_root, user, client, tmp_path):
    job, _, art = job_with_model(user)
    base = services.artifact_record(
        job_id=job.pk, stage="strong_base", kind="model", path=str(model_root / "weak_base")
    )
    client.force_login(user)  # a browser: the page's links go to the API with the session cookie, no token
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    section = page[page.index('id="artifacts"') :]
    section = section[: section.index("</table>")]
    href = f'href="{url(job, art)}"'
    assert href in section and "dpo_cong/model" in section and f'data-artifact="{base.pk}"' in section
    assert url(job, base) not in section  # the input model has no button
    resp = client.get(url(job, art))
    assert resp.status_code == 200 and unpack(body(resp), tmp_path / "out")


@pytest.fixture
def _no_broker(monkeypatch):
    monkeypatch.setattr(services.dispatch, "send", lambda job_id: None)


def test_a_cong_job_s_trained_model_downloads_with_its_model_card(model_root, user, weak_pair, _no_broker, tmp_path):
    """The whole way: a ConG-S job run by the worker's own code records its model; the download unpacks into a
    folder that loads, holding the README.md model card the pipeline wrote."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    request = tiny_cong_request(user, weak_pair, ["cong_s"], max_eval_prompts=1, sft={"learning_rate": 0.0002})
    job = services.job_create(user=user, **request)
    assert run_job(job_id=job.pk) == "succeeded", Job.objects.get(pk=job.pk).error
    rows = api(user).get(url(job)).json()
    (model,) = [r for r in rows if r["kind"] == "model"]
    assert model["stage"] == "cong_s" and model["name"] == "sft_cong_s/model"
    assert {r["kind"] for r in rows} >= {"model", "samples", "results"}
    resp = api(user).get(model["download_url"].removeprefix("http://testserver"))
    unpack(body(resp), tmp_path / "out")
    folder = tmp_path / "out" / f"job-{job.pk}-sft_cong_s-model"
    AutoModelForCausalLM.from_pretrained(folder)
    AutoTokenizer.from_pretrained(folder)
    card = (folder / "README.md").read_text()
    assert "# ConG-S (`cong_s`)" in card and "- model: `weak_base`" in card and "| learning_rate | 0.0002 |" in card
    assert str(dj.RUNS_DIR) not in card
