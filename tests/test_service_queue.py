"""The service's queue and config without a server: two ``JobStore`` objects on one database stand for two
server processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from cl_ml_tools.service import jobs, plugins, service_config
from cl_ml_tools.service.jobs import DONE, QUEUED, RUNNING, JobStore
from cl_ml_tools.service.owner import Owner
from cl_ml_tools.service.storage import Layout


def _stores(tmp_path: Path, n: int = 2) -> list[JobStore]:
    layout = Layout(tmp_path)
    layout.prepare()
    return [JobStore(layout, Owner.this_process()) for _ in range(n)]


def _submit(store: JobStore, plugin: str = "hash", options: dict | None = None) -> str:
    job_id = jobs.uuid.uuid4().hex
    store.submit(job_id, plugin, options or {}, {"name": "a.jpg"})
    return job_id


def test_the_running_limit_holds_across_processes(tmp_path: Path) -> None:
    a, b = _stores(tmp_path)
    ids = [_submit(a, "media_thumbnail") for _ in range(3)]
    assert [j.id for j in a.claim(2, (), (), 16)] == ids[:1]
    assert [j.id for j in b.claim(2, (), (), 16)] == ids[1:2]
    assert a.claim(2, (), (), 16) == [] and b.claim(2, (), (), 16) == []
    a.finish(ids[0], DONE, None)
    assert [j.id for j in b.claim(2, (), (), 16)] == ids[2:]


def test_batches_take_queued_jobs_of_one_plugin_with_equal_options(tmp_path: Path) -> None:
    (store,) = _stores(tmp_path, 1)
    plain = [_submit(store) for _ in range(3)]
    other = _submit(store, options={"pixel": False})
    exif = _submit(store, "exif")
    batch = store.claim(4, ("hash", "exif"), (), 2)
    assert [j.id for j in batch] == plain[:2] and len({j.run for j in batch}) == 1
    assert [j.id for j in store.claim(4, ("hash", "exif"), (), 16)] == [plain[2]]  # other options: not with it
    assert [j.id for j in store.claim(4, ("hash", "exif"), (), 16)] == [other]
    assert [j.id for j in store.claim(4, ("hash", "exif"), (), 16)] == [exif]


def test_one_archive_job_runs_at_a_time(tmp_path: Path) -> None:
    (store,) = _stores(tmp_path, 1)
    first, second = _submit(store, "archive"), _submit(store, "archive")
    photo = _submit(store)
    assert [j.id for j in store.claim(4, (), ("archive",), 1)] == [first]
    assert [j.id for j in store.claim(4, (), ("archive",), 1)] == [photo]  # the second archive waits
    assert store.claim(4, (), ("archive",), 1) == []
    store.finish(first, DONE, None)
    assert [j.id for j in store.claim(4, (), ("archive",), 1)] == [second]


def test_jobs_of_a_dead_process_are_requeued_then_given_up(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.prepare()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = JobStore(layout, Owner(int(dead.stdout), "gone"))
    alive = JobStore(layout, Owner.this_process())
    job_id = _submit(alive)
    for attempt in (1, 2):
        assert [j.attempts for j in gone.claim(1, (), (), 1)] == [attempt]
        assert alive.recover(lease_s=3600, max_attempts=2) == (([job_id], []) if attempt == 1 else ([], [job_id]))
    assert alive.get(job_id).state == RUNNING  # given up: the caller writes its error result


def test_a_live_process_keeps_its_jobs_and_a_graceful_stop_requeues_them(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.prepare()
    a = JobStore(layout, Owner(os.getppid(), "live"))  # a process that is certainly running: ours' parent
    b = JobStore(layout, Owner.this_process())
    job_id = _submit(a)
    a.claim(1, (), (), 1)
    assert b.recover(lease_s=3600, max_attempts=3) == ([], [])
    a.release()
    job = b.get(job_id)
    assert (job.state, job.attempts) == (QUEUED, 0)


def test_the_environment_overrides_the_config(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text((REPO / "config.yaml").read_text())
    env = {"LOG_LEVEL": "DEBUG", "MQTT_BROKER": "broker.lan:1884", "MQTT_TOPIC_PREFIX": "home/photos",
           "WORKER_THREADS": "3", "CL_ML_TOOLS_API_KEY": "k" * 20}  # fmt: skip
    loaded = service_config.load(config, env)
    assert loaded.server["log_level"] == "debug" and loaded.server["api_key"] == "k" * 20
    assert loaded.mqtt == {"enabled": True, "broker": "broker.lan:1884", "topic_prefix": "home/photos", "qos": 1}
    assert loaded.worker["threads"] == 3
    assert service_config.load(config, {}).mqtt["enabled"] is False
    with pytest.raises(service_config.ConfigError, match="WORKER_THREADS must be a whole number"):
        service_config.load(config, {"WORKER_THREADS": "many"})


@pytest.mark.parametrize(
    "section, value, words",
    [("server", {"prot": 80}, "prot"), ("worker", {"job_timeout_seconds": 0}, "job_timeout_seconds"),
     ("plugins", {"enabled": ["hash", "teleport"]}, "teleport"), ("mqtt", {"topic_prefix": "a/#"}, "topic_prefix")],
)  # fmt: skip
def test_a_bad_service_section_is_refused_by_the_workflow_schema(
    tmp_path: Path, section: str, value: dict, words: str
) -> None:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config[section] = {**config[section], **value}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(service_config.ConfigError, match=words):
        service_config.load(path, {})


def test_options_are_the_step_sections_keys_checked_by_the_schema() -> None:
    config = service_config.load(REPO / "config.yaml", {}).raw
    hash_plugin = plugins.PLUGINS["hash"]
    assert plugins.parse_options(hash_plugin, {"pixel": "false", "bytes": '["sha512"]'}, config) == {
        "bytes": ["sha512"],
        "pixel": False,
    }
    with pytest.raises(plugins.OptionsError, match="does not take 'enabled'"):
        plugins.parse_options(hash_plugin, {"enabled": "false"}, config)
    with pytest.raises(plugins.OptionsError, match="bytes"):
        plugins.parse_options(hash_plugin, {"bytes": '["crc32"]'}, config)
    assert plugins.model_ids("face_embedding", config, {"model": "arcface_w600k_r50"}) == [
        "face_detection_full_range_sparse",
        "arcface_w600k_r50",
    ]


def test_every_plugin_is_documented_with_its_step() -> None:
    doc = (REPO / "docs" / "service.md").read_text()
    for name, plugin in plugins.PLUGINS.items():
        assert f"| `{name}` | `{plugin.step}` |" in doc, name
    for variable in service_config.ENVIRONMENT:
        assert f"`{variable}`" in doc, variable


def test_the_deployment_config_is_valid() -> None:
    """deploy/config.yaml, which the Docker image and the systemd unit serve."""
    loaded = service_config.load(REPO / "deploy" / "config.yaml", {})
    assert loaded.server["host"] == "0.0.0.0" and loaded.storage_dir == Path("/var/lib/cl_ml_tools")
    assert loaded.raw["faces"]["model"] == "face_detection_full_range_sparse"  # the defaults are filled in
