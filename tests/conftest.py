"""Shared fixtures."""

from __future__ import annotations

import logging
import os
import uuid
from typing import Iterator

import pytest

# One torch thread for the suite and the CLI subprocesses it starts: on 2-core machines the
# tiny test models run many times faster on one thread than on two (see ScaleOutConfig).
os.environ.setdefault("OMP_NUM_THREADS", "1")

# --- S3: moto in server mode on 127.0.0.1 ---------------------------------------------
# `mock_aws` patches boto3 in-process and does not cover s3fs (aiobotocore), so the tests
# run a real HTTP endpoint and point every AWS client at it through AWS_ENDPOINT_URL.


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """A moto S3 server for the whole session; yields its endpoint URL (env set for s3fs/botocore)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no request log lines in test output
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_SESSION_TOKEN", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.delenv("AWS_PROFILE", raising=False)
        _clear_s3fs_instances()
        yield endpoint
        _clear_s3fs_instances()
    server.stop()


@pytest.fixture
def s3_bucket(moto_s3: str) -> str:
    """A fresh, empty bucket on the moto server, as an `s3://name` URI."""
    import s3fs

    name = f"test-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(name)
    return f"s3://{name}"


def _clear_s3fs_instances() -> None:
    """fsspec caches filesystem instances; a cached one may point at another endpoint."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


# --- Toy world: one small world per session ----------------------------------------------
# Built once (SFT checkpoint, pool with planted defects, validation pool, eval prompts) and
# shared read-only by every test that needs a model or preference data.


@pytest.fixture(scope="session")
def toy_world(tmp_path_factory: pytest.TempPathFactory):
    """The small toy world for seed 0 (`prefcurate.toyworld.build.World`); do not modify its files."""
    from prefcurate.toyworld.build import build_world

    return build_world(str(tmp_path_factory.mktemp("toy_world")), seed=0, size="small")


# --- Prefect: one throwaway API for the session ------------------------------------------


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A temporary Prefect API (sqlite, PREFECT_HOME in a temp dir) for the session; yields its URL.

    Started once: the server takes seconds to boot on two cores.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    with temporary_settings(updates={PREFECT_HOME: str(home)}), prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()
