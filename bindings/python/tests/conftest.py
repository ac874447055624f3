"""Fixtures: the emulator (started if needed), one server per test module, fresh streams."""

import subprocess
import urllib.parse

import pytest

from support import KINESIS, ROOT, Server, Stream, port_open


@pytest.fixture(scope="session", autouse=True)
def emulator():
    port = urllib.parse.urlparse(KINESIS).port
    if not port_open(port):
        subprocess.run([str(ROOT / "scripts" / "emulators.sh"), "start", "kinesalite"], check=True, timeout=180)
    assert port_open(port), f"no Kinesis emulator at {KINESIS}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("server"))
    yield s
    s.stop()


@pytest.fixture
def make_stream():
    made = []

    def make(shards: int = 4) -> Stream:
        stream = Stream(shards)
        made.append(stream)
        return stream

    yield make
    for stream in made:
        stream.delete()
