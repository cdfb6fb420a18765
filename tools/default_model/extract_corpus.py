#!/usr/bin/env python3
"""Re-create tools/default_model/corpus/*.txt from Debian's `r-cran-janeaustenr` package.

The corpus is committed, so training never needs this script; it only documents (and lets anyone
re-check) where the texts came from. The Debian package ships Julia Silge's `janeaustenr` R data
(Project Gutenberg texts of Jane Austen's six novels, Gutenberg header/footer already removed) as
an R lazy-load database. We read it with the pure-Python `rdata` package, so R is not needed.

    apt-get update && cd /tmp && apt-get download r-cran-janeaustenr
    dpkg -x r-cran-janeaustenr_*_all.deb /tmp/janeaustenr
    python3 -m venv /tmp/rdata-venv && /tmp/rdata-venv/bin/pip install rdata
    /tmp/rdata-venv/bin/python tools/default_model/extract_corpus.py /tmp/janeaustenr

Tested with r-cran-janeaustenr 1.0.0-1 (Debian) and rdata 1.1.0. Output is byte-identical to
the committed files (sha256 sums in corpus/README.md).
"""

from __future__ import annotations

import argparse
import gzip
import struct
import sys
import warnings
import zlib
from pathlib import Path

# The four novels we keep (the corpus stays under ~3 MB). Emma and Mansfield Park are left out.
BOOKS = ("prideprejudice", "sensesensibility", "persuasion", "northangerabbey")
DATA_DIR = "usr/lib/R/site-library/janeaustenr/data"


def read_lazyload(data_dir: Path) -> dict[str, list[str]]:
    import rdata  # only needed here; not a project dependency

    warnings.filterwarnings("ignore", message="Unknown file type")
    # .rdx: gzip'd R serialization of list(variables = list(name = c(offset, length)), ...)
    index = rdata.conversion.convert(
        rdata.parser.parse_data(gzip.decompress((data_dir / "Rdata.rdx").read_bytes()))
    )
    blob = (data_dir / "Rdata.rdb").read_bytes()
    out = {}
    for name, (offset, length) in index["variables"].items():
        rec = blob[int(offset) : int(offset) + int(length)]
        # each record: 4-byte big-endian uncompressed length, then a zlib stream
        (size,) = struct.unpack(">I", rec[:4])
        raw = zlib.decompress(rec[4:])
        assert len(raw) == size, name
        lines = rdata.conversion.convert(rdata.parser.parse_data(raw))
        out[str(name)] = ["" if x is None else str(x) for x in lines]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package_root", type=Path, help="where the .deb was unpacked (dpkg -x)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "corpus")
    args = ap.parse_args()
    books = read_lazyload(args.package_root / DATA_DIR)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in BOOKS:
        path = args.out / f"{name}.txt"
        path.write_text("\n".join(books[name]) + "\n", encoding="utf-8")
        print(f"{path}: {len(books[name])} lines, {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
