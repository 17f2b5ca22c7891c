"""Shared fixtures: the real MNIST, small IDX files cut from it, and a CLI runner."""

from __future__ import annotations

import atexit
import ipaddress
import os
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

# Tests send traffic to 127.0.0.1 only. botocore's credential chain and our IMDS client would ask
# 169.254.169.254: off for this process and every one it starts (CLI runs, local agents, trainers);
# a test that exercises the spot watch points the endpoint at its own 127.0.0.1 server and turns this
# back on for itself (tests/conftest.py imds). Were anything to ignore the switch, the endpoint still
# names this machine (port 1: nothing listens there).
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = "http://127.0.0.1:1"
# Likewise MNIST: a run whose data folder lacks a file would download it from torchvision's mirrors; here it
# reaches port 1 of this machine instead (refused: the one line that says where to get the files). A test
# that downloads serves the files itself (tests/support/mirror.py) and points the variable there.
os.environ["MNIST_LAUNCH_DATA_MIRRORS"] = "http://127.0.0.1:1/"

# Nothing a test runs writes under the real home: `~` (matplotlib's font cache, pip's cache) and the
# launcher's MNIST_LAUNCH_HOME (run records that `logs RUN_ID` looks up, known_hosts, its SSH key) point
# into a folder of this session, for this process and every one it starts; a test that needs its own
# sets MNIST_LAUNCH_HOME itself. (`logs RUN_ID` of a local run made ~/.mnist-launch/runs in the real home.)
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="mnist-launch-tests-home-"))
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)
os.environ["HOME"] = str(_SESSION_HOME)
os.environ["MNIST_LAUNCH_HOME"] = str(_SESSION_HOME / ".mnist-launch")

# One compute thread per process: the suite runs several workers, each starting launchers, agents and
# trainers, on a machine with a couple of cores. torch's OpenMP threads spin while they wait for work, so
# two of them a process on cores that other processes share burned CPU for nothing (the trainers took
# about 18 s of CPU each in a parallel run, 9 s with one thread alone). Every process a test starts
# inherits it; the tests' "instance" gets the same through its sshd (tests/support/aws_helpers.py).
os.environ.setdefault("OMP_NUM_THREADS", "1")

# moto's EC2 loads every AMI it knows into each region's backend: its 44 public images, the region's 30
# "latest" ones and 1,227 ECS-optimized ones, parsed from gzipped JSON each time a test's mock or server
# first touches a region (about a third of a second of CPU each, hundreds of times in a run). The tests
# use the first two kinds only (Ubuntu, Amazon Linux, the Deep Learning AMIs), so moto reads just those,
# from one file written here for the session (MOTO_AMIS_PATH: moto's own switch, read when its EC2 models
# are first imported, which is after this).
def _moto_amis() -> None:
    import gzip
    import importlib.util
    import json

    spec = importlib.util.find_spec("moto")
    if spec is None or not spec.origin or "MOTO_AMIS_PATH" in os.environ:
        return
    res = Path(spec.origin).parent / "ec2" / "resources"
    try:
        amis = json.loads(gzip.open(res / "amis.json.gz").read())
        amis += json.loads(gzip.open(res / "latest_amis" / "us-east-1.json.gz").read())
    except OSError:
        return  # another moto layout: it loads its defaults
    out = _SESSION_HOME / "moto-amis.json"
    out.write_text(json.dumps(list({a["ami_id"]: a for a in amis}.values())))
    os.environ["MOTO_AMIS_PATH"] = str(out)


_moto_amis()

# The tests' own boto3 calls (boto3.client(...): the default session, made again whenever a test switches
# identity) parse botocore's models through the process's one loader, as the code's sessions do
# (infra/aws/clients.py): each new default session had parsed EC2's megabytes of JSON again.
def _default_session_sharing_models(**kwargs) -> None:
    import boto3

    from infra.aws.clients import new_session

    boto3.DEFAULT_SESSION = new_session(**kwargs)


def _share_boto3_models() -> None:
    try:
        import boto3
    except ImportError:
        return
    boto3.setup_default_session = _default_session_sharing_models


_share_boto3_models()


# And they make hundreds of clients (a few a test, each test its own sessions), for each of which botocore
# builds a new client class: a method object with its lazy docstring for each of the service's operations
# (about 600 for EC2), some 15% of the CPU the in-process AWS tests take. The methods depend only on the
# service's model (each closes over its operation's name), so within this process each service's set is
# built once and copied into every new class, which botocore still builds, event handlers included.
def _share_client_methods() -> None:
    try:
        from botocore.client import ClientCreator
    except ImportError:
        return
    real = getattr(ClientCreator, "_create_methods", None)
    if real is None:  # another botocore: its clients are made as it makes them
        return
    made: dict = {}

    def create_methods(self, service_model):
        model = getattr(service_model, "_service_description", None)  # the loader's parsed model, shared
        if model is None:
            return real(self, service_model)
        hit = made.get(id(model))
        if hit is None or hit[0] is not model:
            hit = made[id(model)] = (model, real(self, service_model))
        return dict(hit[1])  # the class's own dict: creating-client-class handlers add to it

    ClientCreator._create_methods = create_methods


_share_client_methods()


# S3 as it really behaves under a read racing a write: a GET of an object being replaced gets the old bytes
# or the new, never an error. moto closes the replaced object's buffer at once, so a read in flight on another
# thread (a follow reading events.jsonl while the agent re-uploads it) failed with "I/O operation on closed
# file". Here a replaced object's buffer is left to be freed with the object, when no reader holds it.
def _replaced_s3_objects_stay_readable() -> None:
    try:
        from moto.s3.models import FakeKey
    except ImportError:
        return
    if hasattr(FakeKey, "dispose"):
        FakeKey.dispose = lambda self, garbage=False: None  # type: ignore[method-assign]


_replaced_s3_objects_stay_readable()

# EC2 placement groups, which moto lacks: a multi-node cluster sits in one, and `down` looks for one on every
# cluster (tests/support/moto_placement.py), in-process and in the ThreadedMotoServer alike.
def _moto_placement_groups() -> None:
    from tests.support.moto_placement import install

    install()


_moto_placement_groups()

# And in this process a connection anywhere else is refused and fails the test that tried it (an
# address moto invented for an instance, the metadata service, the internet): see _loopback_only.
_REFUSED: list[str] = []


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _loopback_guard(real):
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(str(address[0])):
            _REFUSED.append(f"{address[0]}:{address[1]}")
            raise ConnectionRefusedError(f"tests reach 127.0.0.1 only, not {address[0]}:{address[1]}")
        return real(self, address)

    return connect


socket.socket.connect = _loopback_guard(socket.socket.connect)  # type: ignore[method-assign]
socket.socket.connect_ex = _loopback_guard(socket.socket.connect_ex)  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _loopback_only():
    seen = len(_REFUSED)
    yield
    tried = _REFUSED[seen:]
    assert not tried, f"this test tried to reach {', '.join(tried)}: tests send traffic to 127.0.0.1 only"


SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"


def in_ci() -> bool:
    """CI sets CI=true (GitHub Actions, GitLab, most others): there a missing input fails, never skips."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def real_mnist_dir() -> Path:
    path = Path(os.environ.get("MNIST_LAUNCH_TEST_DATA", SHARED_MNIST))
    if not path.is_dir() or (not (path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file()
                             and not any(path.rglob("train-images*"))):
        what = f"real MNIST not found at {path} — put it there or set MNIST_LAUNCH_TEST_DATA to a folder holding it"
        if in_ci():  # the end-to-end tests would all skip and CI would pass without running them
            pytest.fail(f"{what} (CI is set: the end-to-end tests need it)", pytrace=False)
        pytest.skip(what)
    return path


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return real_mnist_dir()


# How many real digits small_mnist holds. Runs in the tests check mechanics (events, checkpoints, resume,
# cancel, recovery), not learning: each image costs CPU in every epoch of every run (2,000 made the
# suite's runs a fifth of its CPU), and a test that must interrupt a run mid-way slows its steps down
# with MNIST_LAUNCH_STEP_DELAY instead of training on more data.
SMALL_TRAIN, SMALL_TEST = 512, 256


def _cut_mnist(out: Path, n_train: int, n_test: int) -> Path:
    """The first ``n_train``/``n_test`` records of the real files, as gzipped IDX files of their own: read
    from the start of each gzip stream (header, then as many records as wanted), not the whole 47 MB."""
    import gzip
    import struct

    from trainer.data import FILES, locate

    found = locate(real_mnist_dir())
    out.mkdir(parents=True, exist_ok=True)
    for key, (stem, magic, _) in FILES.items():
        n = n_train if key.startswith("train") else n_test
        head, record = (16, 28 * 28) if magic == 2051 else (8, 1)
        src = found[key]
        with (gzip.open(src, "rb") if src.suffix == ".gz" else open(src, "rb")) as f:
            header = bytearray(f.read(head))
            body = f.read(n * record)
        assert len(body) == n * record, f"{src} holds fewer than {n} records"
        header[4:8] = struct.pack(">I", n)
        with gzip.open(out / f"{stem}.gz", "wb", compresslevel=1) as g:
            g.write(bytes(header) + body)
    return out


@pytest.fixture(scope="session")
def small_mnist(tmp_path_factory) -> Path:
    """Flat, gzipped IDX files of the first 512 train / 256 test real digits (4 steps an epoch at batch 128)."""
    return _cut_mnist(tmp_path_factory.mktemp("small_mnist"), SMALL_TRAIN, SMALL_TEST)


@pytest.fixture(scope="session")
def mnist_mirror(tmp_path_factory):
    """An MNIST mirror on 127.0.0.1 serving a copy of the real .gz files, and broken ones (tests/support/mirror.py)."""
    import gzip

    from tests.support.mirror import Mirror
    from trainer.data import locate

    served = tmp_path_factory.mktemp("mirror")
    for src in locate(real_mnist_dir()).values():
        if src.suffix == ".gz":
            shutil.copyfile(src, served / src.name)
        else:
            (served / (src.name + ".gz")).write_bytes(gzip.compress(src.read_bytes(), compresslevel=1))
    with Mirror(served) as mirror:
        yield mirror


@pytest.fixture(scope="session")
def mnist_2k(tmp_path_factory) -> Path:
    """The first 2,000 train / 500 test real digits: for the one test that checks a run learns."""
    return _cut_mnist(tmp_path_factory.mktemp("mnist_2k"), 2000, 500)


@pytest.fixture(scope="session")
def two_process_run(mnist_2k, tmp_path_factory):
    """model3 on 2 processes of this machine (``TWO_PROCESS`` on mnist_2k), uninterrupted: what test_train checks
    and the 2-node cloud run is compared with. One run a session: the first worker that asks makes it under a
    lock in the folder the xdist workers share; the others wait for it and read it. (run folder, its run_end,
    what the live view printed)."""
    import fcntl
    import json

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "two-process-run"
    with open(shared / "two-process-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when this process ends, whatever happens
        done = root / "done.json"
        if not done.is_file():
            from launcher.orchestrator import LocalRequest, start_run
            from tests.support.runs import TWO_PROCESS, run_to_end

            run = start_run(LocalRequest(config="configs/model3.yaml", store=str(root), data_dir=str(mnist_2k),
                                         processes=2, run_id="two", overrides=TWO_PROCESS))
            end, text = run_to_end(run)
            done.write_text(json.dumps({"end": end, "text": text}))
    made = json.loads(done.read_text())
    return root / "runs" / "two", made["end"], made["text"]


@pytest.fixture(scope="module")
def module_sshd(tmp_path_factory):
    """One real sshd for a whole test module: starting one per test would dominate the runtime."""
    from tests.support.sshd_fixture import start_sshd, stop_sshd

    srv = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield srv
    stop_sshd(srv)


@pytest.fixture(params=["local", "ssh"])
def any_host(request, tmp_path):
    """The same test on LocalHost and on an SSHHost to the module's sshd."""
    from infra.host import LocalHost
    from infra.ssh import Endpoint, SSHHost

    if request.param == "local":
        yield LocalHost()
        return
    srv = request.getfixturevalue("module_sshd")
    with SSHHost(Endpoint(srv.user, srv.host, srv.port), srv.client_key, known_hosts=tmp_path / "known_hosts") as ssh:
        yield ssh


@pytest.fixture
def imds(monkeypatch):
    """An instance-metadata service on 127.0.0.1 that this process and the ones it starts ask (boto3's
    switch turned back on for the test): notices as the test sets them (tests/support/imds.py)."""
    from tests.support.imds import FakeIMDS

    fake = FakeIMDS()
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", fake.url)
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    yield fake
    fake.close()


@pytest.fixture
def tiny_mnist(tmp_path):
    """Four IDX files of a few blank digits: all that shipping or fetching MNIST needs (headers, sizes)."""
    from trainer.data import write_idx

    d = tmp_path / "tiny"
    d.mkdir()
    for name, n in (("train", 4), ("t10k", 2)):
        write_idx(d / f"{name}-images-idx3-ubyte", np.zeros((n, 28, 28), np.uint8))
        write_idx(d / f"{name}-labels-idx1-ubyte", np.zeros(n, np.uint8))
    return d


def pytest_xdist_auto_num_workers(config) -> int:
    """How many workers `-n auto` starts: twice the cores, as most of a test's time is spent waiting on
    other processes (sshd, accelerate, a throttled trainer) rather than computing; at least 2, and no
    more than memory allows (about 1.5 GiB per worker at its peak: a worker, its CLI, agent and ranks), nor 4.
    MNIST_LAUNCH_TEST_WORKERS=N overrides."""
    override = os.environ.get("MNIST_LAUNCH_TEST_WORKERS", "").strip()
    if override:
        return int(override)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = 8.0
    # at most 4: the worker count both full parallel runs passed with (6 on 2 cores was slower, and showed
    # two tests that depended on which tests shared their process; both fixed)
    return max(2, min(2 * cores, int(mem_gib / 1.5), 4))


# About how many seconds of CPU one test of these modules takes (measured on the 2-core dev machine; the rest
# take about a second or less): the long tests are spread over the workers by these, and run first in each
# worker's share so that the workers end together instead of one finishing a long test alone at the end.
SECONDS = {"test_multinode_cloud": 45, "test_multinode": 20, "test_sweep": 12,
           "test_remote_train": 20, "test_real_mnist": 15, "test_resume": 15, "test_train": 12, "test_iam": 10,
           "test_aws_faults_cli": 12, "test_cli": 8, "test_cloud_cli": 3, "test_aws_provider": 2.5,
           "test_aws_faults": 2.3, "test_remote_setup": 2, "test_s3_store": 1.5, "test_autostop": 1.4,
           # one test of a module (MODULE::TEST) where the module's others take about nothing
           "test_docs_commands::test_local_commands": 25, "test_docs_commands::test_cloud_commands": 6,
           "test_user_model::test_the_readme_example_model_trains_locally_with_its_summary": 12,
           "test_optim::test_a_training_process_imports_neither_dynamo_nor_dtensor_nor_matplotlib": 6}

# Modules whose module-scoped fixture is dear (a moto server, the strict IAM world, an sshd with its login user
# and image venv, `up`): every worker that runs one of their tests builds it again, so their tests go to this
# many workers only (test_remote_train's cloud costs about 15 s of CPU a worker; test_resume's uninterrupted run,
# which its tests compare against, about 9 s; test_multinode_cloud's 2-node cluster is taken down by its last test;
# test_sweep's one sweep serves three tests).
GROUPED = {"test_remote_train": 2, "test_multinode_cloud": 1, "test_sweep": 1, "test_resume": 1,
           "test_aws_faults_cli": 1, "test_aws_faults": 1, "test_remote_setup": 1, "test_cluster_prompts": 1,
           "test_autostop": 1, "test_datasync": 1, "test_sync": 1, "test_hostile_input": 1}


def _module(item) -> str:
    return item.path.stem if hasattr(item, "path") else ""


def _seconds(item) -> float:
    module = _module(item)
    return SECONDS.get(f"{module}::{getattr(item, 'originalname', '')}", SECONDS.get(module, 0.5))


def deal(items: list, workers: int) -> list:
    """The collection in the order that gives each xdist worker its share: worksteal hands worker i the
    i-th block of ``len // (workers - i)`` items (an idle worker later takes the end of a busy one's).
    A GROUPED module's tests share as few blocks as it says; the long tests go where the least CPU is
    planned yet; the quick ones fill every block to its size; in each block the longest run first."""
    sizes, left = [], len(items)
    for i in range(workers):
        sizes.append(left // (workers - i))
        left -= sizes[-1]
    blocks: list[list] = [[] for _ in range(workers)]
    load = [0.0] * workers
    for name, k in GROUPED.items():
        mine = [it for it in items if _module(it) == name]
        chosen = sorted(range(workers), key=lambda w: (load[w], len(blocks[w]), w))[:k]
        for j, it in enumerate(mine):
            w = chosen[j % len(chosen)]
            blocks[w].append(it)
            load[w] += _seconds(it)
    rest = sorted((it for it in items if _module(it) not in GROUPED), key=_seconds, reverse=True)  # stable
    for it in rest:
        room = [w for w in range(workers) if len(blocks[w]) < sizes[w]]
        if _seconds(it) >= 1:
            w = min(room, key=lambda w: (load[w], w))
        else:
            w = max(room, key=lambda w: (sizes[w] - len(blocks[w]), -w))
        blocks[w].append(it)
        load[w] += _seconds(it)
    for b in blocks:
        b.sort(key=_seconds, reverse=True)  # stable: a module's tests keep their order
    return [it for b in blocks for it in b]


def pytest_collection_modifyitems(config, items) -> None:
    items.sort(key=_seconds, reverse=True)  # stable: within a module, and for every other module, the collected order
    workers = int(getattr(config, "workerinput", {}).get("workercount", 0))
    if workers > 1:
        items[:] = deal(items, workers)
