"""The compose file describes the deployment the README promises (no Docker engine runs here, so
this checks structure; `docker-compose -f docker/compose.yaml config` validated it by hand)."""

from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def test_compose_has_every_service_and_a_shared_runs_volume():
    spec = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = spec["services"]
    assert set(services) == {"web", "worker-cpu", "worker-gpu", "beat", "redis", "postgres"}
    assert services["beat"]["command"][:4] == ["celery", "-A", "congweb", "beat"]
    for name in ("web", "worker-cpu", "worker-gpu", "beat"):
        assert "runs:/var/congweb" in services[name]["volumes"], name
        env = services[name]["environment"]
        assert env["REDIS_URL"].startswith("redis://redis") and env["DATABASE_URL"].startswith("postgres://")
    gpu = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["worker-gpu"]["build"]["dockerfile"] == "docker/Dockerfile.gpu"


def test_images_pin_the_same_torch_as_requirements():
    req = (DOCKER.parent / "requirements.txt").read_text()
    assert "torch==2.13.0" in req
    for f in ("Dockerfile", "Dockerfile.gpu"):
        assert "torch==2.13.0" in (DOCKER / f).read_text(), f
