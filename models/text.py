"""Real English text for calibration and evaluation: Debian's python3.11-doc (reST sources).

The package is downloaded with ``apt-get download`` against a private bookworm source list in the
cache folder and unpacked with ``dpkg -x`` (nothing is installed). ``library/`` is the
calibration text, ``tutorial/`` the evaluation text (disjoint); ``../shared/design/models.md``.

    python -m models.text          # fetch (once) and print the folders and their text hashes
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from models.export import CACHE_DIR

PACKAGE = "python3.11-doc"
SUITE = "bookworm"
_SOURCES = "usr/share/doc/python3.11/html/_sources"


def docs_dir(cache_dir: Path = CACHE_DIR) -> Path:
    """The unpacked ``_sources`` folder (fetched on first use)."""
    root = cache_dir / "text" / PACKAGE
    sources = root / _SOURCES
    if (sources / "tutorial").is_dir():
        return sources
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="apt-", dir=root.parent) as tmp:
        t = Path(tmp)
        for d in ("lists/partial", "cache/archives/partial", "etc"):
            (t / d).mkdir(parents=True)
        (t / "etc/sources.list").write_text(f"deb http://deb.debian.org/debian {SUITE} main\n")
        opts = [
            f"-oDir::Etc::SourceList={t}/etc/sources.list",
            "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={t}/lists",
            f"-oDir::Cache={t}/cache",
            "-oDebug::NoLocking=1",
            "-oAPT::Sandbox::User=root",
        ]
        for cmd in (["apt-get", *opts, "-qq", "update"], ["apt-get", *opts, "-qq", "download", PACKAGE]):
            proc = subprocess.run(cmd, cwd=t, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd[:1] + cmd[-2:])} failed: {proc.stderr.strip()[-400:]}")
        debs = sorted(t.glob(f"{PACKAGE}_*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download {PACKAGE} produced no .deb")
        subprocess.run(["dpkg", "-x", str(debs[0]), str(root)], check=True)
    if not (sources / "tutorial").is_dir():
        raise RuntimeError(f"{PACKAGE} has no {_SOURCES}/tutorial")
    return sources


def calibration_dir(cache_dir: Path = CACHE_DIR) -> Path:
    return docs_dir(cache_dir) / "library"


def evaluation_dir(cache_dir: Path = CACHE_DIR) -> Path:
    return docs_dir(cache_dir) / "tutorial"


def main() -> None:
    from onnx_compress.calibration.data import read_text, text_hash

    for name, folder in (("calibration", calibration_dir()), ("evaluation", evaluation_dir())):
        text = read_text(folder)
        print(f"{name}: {folder} ({len(text)} characters, hash {text_hash(text)})")


if __name__ == "__main__":
    main()
