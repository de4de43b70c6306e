"""GET /models/{name}/versions/{v}/files/{part}, and store files readable by another user."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from models import store
from tests.helpers import REPO
from tests.service.conftest import make_settings

PARTS = {"weights": store.WEIGHTS_FILE, "meta": store.META_FILE, "vocab": store.VOCAB_FILE}


async def test_each_file_downloads_as_stored(make_client, tiny_store: Path) -> None:
    client = await make_client(make_settings(tiny_store))
    for part, file in PARTS.items():
        r = await client.get(f"/models/gru/versions/1/files/{part}")
        assert r.status_code == 200
        assert r.content == (tiny_store / "gru" / "1" / file).read_bytes()
        expected = "application/octet-stream" if part == "weights" else "application/json"
        assert r.headers["content-type"].startswith(expected)
        assert f"gru-v1-{file}" in r.headers["content-disposition"]
    # The meta downloaded is the one /models/{name} describes.
    meta = (await client.get("/models/gru/versions/1/files/meta")).json()
    assert meta["version"] == 1 and meta["arch"] == (await client.get("/models/gru")).json()["arch"]


UNKNOWN = [
    "/models/nope/versions/1/files/meta",
    "/models/gru/versions/9/files/meta",
    "/models/gru/versions/0/files/meta",
    "/models/gru/versions/01/files/meta",
    "/models/gru/versions/1/files/checkpoint",
    "/models/gru/versions/1/files/..%2F..%2Fjobs.sqlite3",
    "/models/..%2Fgru/versions/1/files/meta",
]


async def test_unknown_versions_and_files_are_404(make_client, tiny_store: Path) -> None:
    client = await make_client(make_settings(tiny_store))
    for path in UNKNOWN:
        r = await client.get(path)
        assert r.status_code == 404, (path, r.text)
        body = r.json()
        assert body["status"] == 404 and body["error"] == "not_found" and body["message"]


async def test_protected_inference_protects_the_files(make_client, tiny_store: Path) -> None:
    settings = make_settings(tiny_store, api_key="s3cret", protect_inference=True)
    client = await make_client(settings)
    url = "/models/lstm/versions/1/files/weights"
    assert (await client.get(url)).status_code == 401
    ok = await client.get(url, headers={"authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert ok.content == (tiny_store / "lstm" / "1" / store.WEIGHTS_FILE).read_bytes()
    open_settings = make_settings(tiny_store, api_key="s3cret")
    assert (await (await make_client(open_settings)).get(url)).status_code == 200


@pytest.fixture(scope="module")
def shared_dir() -> Iterator[Path]:
    """A store written by another process under umask 077, every folder made by the store.

    pytest's own temp folders are private to their user (0700): this one is not.
    """
    path = Path(tempfile.mkdtemp(prefix="gatehouse-shared-"))
    os.chmod(path, 0o755)
    code = (
        "import sys; from pathlib import Path; from tests.helpers import save_tiny_model; "
        "save_tiny_model(Path(sys.argv[1]), 'gru', 'gru')"
    )
    model_dir = str(path / "store" / "models")
    subprocess.run([sys.executable, "-c", code, model_dir], cwd=REPO, check=True, umask=0o077)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_modes_do_not_depend_on_the_writers_umask(shared_dir: Path) -> None:
    model_dir = shared_dir / "store" / "models"
    version = model_dir / "gru" / "1"
    for d in (shared_dir / "store", model_dir, model_dir / "gru", version):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755, d
    for file in PARTS.values():
        assert stat.S_IMODE((version / file).stat().st_mode) == 0o644, file


# Reads a version as the store's loader does up to the tensors: the JSON files, and the
# safetensors header and data, with nothing but the standard library.
_READ_AS_OTHER = """
import json, os, struct, sys
version = sys.argv[1]
meta = json.load(open(os.path.join(version, "meta.json")))
vocab = json.load(open(os.path.join(version, "vocab.json")))
with open(os.path.join(version, "model.safetensors"), "rb") as f:
    (size,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(size))
    data = f.read()
end = max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
print(json.dumps({"arch": meta["arch"], "words": len(vocab["vocab"]["itos"]),
                  "complete": len(data) == end, "uid": os.getuid()}))
"""


def _other_user_python() -> str | None:
    # Another user needs an interpreter it can reach: the test's own may sit under /root.
    for candidate in (sys.executable, "/usr/bin/python3"):
        try:
            done = subprocess.run(
                [candidate, "-c", "pass"], user="nobody", capture_output=True, timeout=60
            )
        except (PermissionError, OSError):
            continue
        if done.returncode == 0:
            return candidate
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_a_version_written_by_root_reads_as_nobody(shared_dir: Path) -> None:
    python = _other_user_python()
    if python is None:
        pytest.skip("no interpreter the user nobody can run (modes are checked above)")
    model_dir = shared_dir / "store" / "models"
    version = model_dir / "gru" / "1"
    done = subprocess.run(
        [python, "-c", _READ_AS_OTHER, str(version)],
        user="nobody",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["uid"] != 0 and seen["arch"] == "gru" and seen["complete"]
    assert seen["words"] == store.load_version(model_dir, "gru").config.vocab_size
