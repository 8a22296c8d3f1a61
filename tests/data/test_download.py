"""Downloads: a local HTTP server stands in for the release host; the offline path uses an unreachable port."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading

import numpy as np
import pytest
from official_layouts import write_cifar10_python

from testtime.data import load_dataset
from testtime.data.download import RELEASES, DownloadError, Resource, download_dataset, unpack

UNREACHABLE = "http://127.0.0.1:9/"  # the discard port: connection refused at once, no internet involved


@pytest.fixture
def server(tmp_path):
    """Serve ``tmp_path/www`` on 127.0.0.1 (an ephemeral port) for the duration of a test."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def make_cifar10_archive(tmp_path, www):
    src = tmp_path / "src"
    written = write_cifar10_python(src, n_per_batch=3)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    (www / "cifar-10-python.tar.gz").write_bytes(buf.getvalue())
    return hashlib.md5(buf.getvalue()).hexdigest(), written


def test_release_table_has_official_checksums():
    assert RELEASES["cifar10"][0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert RELEASES["cifar100"][0].md5 == "eb9058c3a382ffc7106e4002c42a8d85"
    assert RELEASES["cifar10-c"][0].url.startswith("https://zenodo.org/records/2535967/")
    assert all(len(r.md5) == 32 for name, rs in RELEASES.items() for r in rs if name != "tiny-imagenet-c")


def test_download_verify_unpack_and_load(tmp_path, server):
    www, url = server
    md5, written = make_cifar10_archive(tmp_path, www)
    dest = tmp_path / "dest"
    res = (Resource(url + "cifar-10-python.tar.gz", "cifar-10-python.tar.gz", md5),)
    logs = []
    found = download_dataset("cifar10", dest, resources=res, timeout=5, log=logs.append)
    assert found == dest / "cifar-10-batches-py"
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-10-batches-py"]  # archive removed, no temp left
    s = load_dataset("cifar10", "test", root=dest)
    assert np.array_equal(s.images, written["test"][0])
    # a second call finds it and downloads nothing
    assert download_dataset("cifar10", dest, resources=res, timeout=5, log=logs.append) == found
    assert "already present" in logs[-1]


def test_checksum_mismatch_leaves_nothing(tmp_path, server):
    www, url = server
    make_cifar10_archive(tmp_path, www)
    dest = tmp_path / "dest"
    res = (Resource(url + "cifar-10-python.tar.gz", "cifar-10-python.tar.gz", "0" * 32),)
    with pytest.raises(DownloadError, match="checksum mismatch .* expected 00000000"):
        download_dataset("cifar10", dest, resources=res, timeout=5)
    assert list(dest.iterdir()) == []


def test_http_error_is_one_clear_line(tmp_path, server):
    _, url = server
    res = (Resource(url + "missing.tar.gz", "missing.tar.gz", "0" * 32),)
    with pytest.raises(DownloadError, match="cannot download .*missing.tar.gz .*HTTP 404.*--root"):
        download_dataset("cifar10", tmp_path / "d", resources=res, timeout=5)


def test_offline_fails_with_what_to_do(tmp_path):
    res = (Resource(UNREACHABLE + "cifar-10-python.tar.gz", "cifar-10-python.tar.gz", "c" * 32),)
    with pytest.raises(DownloadError) as info:
        download_dataset("cifar10", tmp_path / "d", resources=res, timeout=2)
    msg = str(info.value)
    assert "\n" not in msg and "cannot download" in msg and "--root" in msg and "$TESTTIME_DATA" in msg
    assert list((tmp_path / "d").iterdir()) == []


def test_bad_arguments(tmp_path):
    with pytest.raises(KeyError, match="unknown downloadable dataset 'imagefolder'; valid: cifar10"):
        download_dataset("imagefolder", tmp_path)
    with pytest.raises(ValueError, match="timeout: expected a positive number"):
        download_dataset("cifar10", tmp_path, timeout=0)


def test_unsafe_archive_member_refused(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        data = b"x"
        info = tarfile.TarInfo("../escape.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (tmp_path / "out").mkdir()
    with pytest.raises(DownloadError, match="refusing unsafe archive member '../escape.txt'"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists() and list((tmp_path / "out").iterdir()) == []
