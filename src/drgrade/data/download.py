"""Fetch the public DR datasets that can be fetched, checksum-verified; say how to get the rest.

RetinaMNIST is a direct download from Zenodo (MedMNIST v2/v3 record, MD5s as the MedMNIST
package publishes them). EyePACS, APTOS, DDR, Messidor-2 and IDRiD need an account,
accepted terms or a file host's page, so `download` explains the steps instead of pretending.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from drgrade.atomic import RESUME_SUFFIX, write_error
from drgrade.errors import DrgradeError

TIMEOUT_S = 30  # per connect/read: a firewalled machine fails in seconds, not minutes
CHUNK = 1 << 20
PARTIAL_CONTENT = 206  # the server sent the range asked for
RANGE_NOT_SATISFIABLE = 416  # nothing lies after the bytes we have


@dataclass(frozen=True)
class Remote:
    """A file on a server and the MD5 its publisher gives for it."""

    url: str
    md5: str

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1].split("?")[0]


_ZENODO = "https://zenodo.org/records/10519652/files"
RETINAMNIST = {
    28: Remote(f"{_ZENODO}/retinamnist.npz?download=1", "bd4c0672f1bba3e3a89f0e4e876791e4"),
    64: Remote(f"{_ZENODO}/retinamnist_64.npz?download=1", "afda852cc34dcda56f86ad2b2457dbcc"),
    128: Remote(f"{_ZENODO}/retinamnist_128.npz?download=1", "e48e916a24454daf90583d4e6efb1a18"),
    224: Remote(f"{_ZENODO}/retinamnist_224.npz?download=1", "eae7e3b6f3fcbda4ae613ebdcbe35348"),
}
MANUAL = {
    "eyepacs": (
        "EyePACS (Kaggle 2015, 35,126 training and 53,576 test photographs, about 88 GB) "
        "needs a Kaggle account that has accepted the competition rules. With the Kaggle CLI "
        "configured: `kaggle competitions download -c diabetic-retinopathy-detection -p "
        "{out}/eyepacs`, unpack train.zip.*, trainLabels.csv.zip and, for the official "
        "split (val: Usage Public, test: Private), test.zip.* and retinopathy_solution.csv "
        "there, then `drgrade prepare {out}/eyepacs --format eyepacs --out {out}/eyepacs-512 "
        "--size 512`."
    ),
    "aptos": (
        "APTOS 2019 (3,662 training photographs) needs a Kaggle account that has accepted "
        "the competition rules: `kaggle competitions download -c aptos2019-blindness-detection "
        "-p {out}/aptos`, unzip it there, then `drgrade prepare {out}/aptos --format aptos "
        "--out {out}/aptos-512 --size 512`."
    ),
    "ddr": (
        "DDR (13,673 photographs from 147 hospitals; grades 0-4, and 5 for ungradable) is "
        "shared through the download links in https://github.com/nkicsl/DDR-dataset. Unpack "
        "it into {out}/DDR-dataset, then `drgrade prepare {out}/DDR-dataset --format ddr "
        "--out {out}/ddr-512 --size 512` (the grade-5 photographs are left out and counted)."
    ),
    "messidor2": (
        "Messidor-2 (1,748 photographs) comes in two parts: the images from ADCIS after "
        "accepting its licence (https://www.adcis.net/en/third-party/messidor2/), unpacked "
        "into {out}/messidor2/IMAGES with its messidor-2.csv (the examinations, which pair "
        "the eyes) in {out}/messidor2, and the adjudicated grades (Krause et al. 2018) as "
        "messidor_data.csv from `kaggle datasets download -d google-brain/messidor2-dr-grades "
        "-p {out}/messidor2`; then `drgrade prepare {out}/messidor2 --format messidor2 --out "
        "{out}/messidor2-512 --size 512`."
    ),
    "idrid": (
        "IDRiD needs a (free) IEEE DataPort login: download 'B. Disease Grading' from "
        "https://ieee-dataport.org/open-access/indian-diabetic-retinopathy-image-dataset-idrid, "
        "unzip it into {out}/idrid, then `drgrade prepare {out}/idrid --format idrid --out "
        "{out}/idrid-512 --size 512` (its official split: 413 train, 103 test)."
    ),
}
DATASETS = ("retinamnist", *MANUAL)


def download(dataset: str, out: Path | str, size: int = 28, progress: bool = True) -> Path:
    """Download `dataset` into `out` and verify it; the file's path.

    Datasets behind a login raise a DrgradeError that says how to get them.
    """
    out = Path(out)
    if dataset in MANUAL:
        raise DrgradeError(f"{dataset} cannot be downloaded for you: "
                           + MANUAL[dataset].format(out=out))
    if dataset != "retinamnist":
        raise DrgradeError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if size not in RETINAMNIST:
        raise DrgradeError(f"RetinaMNIST comes at {', '.join(map(str, RETINAMNIST))} px, "
                           f"not {size}")
    return fetch(RETINAMNIST[size], out, progress)


def fetch(remote: Remote, out: Path, progress: bool = True) -> Path:
    """`remote` saved as out/<name> once its MD5 matches; never half a file under that name.

    Bytes arrive in out/<name>.part, which an interrupted download (a kill, a lost
    connection, a full disk) leaves behind: the next call asks the server for the rest
    (an HTTP Range request) and starts over only if the server will not send a part. A
    file already at out/<name> is verified, never overwritten.
    """
    target = out / remote.name
    if target.is_file():
        found = md5_of(target)
        if found != remote.md5:
            raise DrgradeError(f"{target} is there but its MD5 {found} is not the published "
                               f"{remote.md5}: a damaged or different file. Delete it to "
                               "download it again.")
        return target
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(target, error) from None
    part = target.with_name(target.name + RESUME_SUFFIX)
    have = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = urllib.request.urlopen(urllib.request.Request(remote.url, headers=headers),
                                          timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code != RANGE_NOT_SATISFIABLE or not have:
            raise _unreachable(remote, target, error) from None
        response = None  # nothing after the bytes we have: the part may be the whole file
    except OSError as error:  # urllib's URLError, or a socket timeout
        raise _unreachable(remote, target, error, part) from None
    if response is None:
        _finish(remote, target, part, md5_of(part))
        return target
    if have and not _continues_at(response, have):
        have = 0  # the server sends the whole file: start over
    digest = hashlib.md5(usedforsecurity=False)
    if have:
        with part.open("rb") as earlier:
            digest = hashlib.file_digest(earlier, lambda: hashlib.md5(usedforsecurity=False))
    total = _length(response)
    with response, tqdm(total=None if total is None else total + have, initial=have,
                        unit="B", unit_scale=True, desc=remote.name,
                        disable=not progress) as bar:
        try:
            with part.open("ab" if have else "wb") as file:
                for chunk in _chunks(response, remote, target, part):
                    file.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
                file.flush()
                os.fsync(file.fileno())
        except OSError as error:
            raise DrgradeError(f"{write_error(target, error)}; the bytes so far are kept in "
                               f"{part}: run this again to resume") from None
    _finish(remote, target, part, digest.hexdigest())
    return target


def _continues_at(response, offset: int) -> bool:
    """Whether the server sent the file from `offset` on (206 with that range), not all of it."""
    if getattr(response, "status", None) != PARTIAL_CONTENT:
        return False
    content_range = response.headers.get("Content-Range", "")
    return content_range.startswith(f"bytes {offset}-")


def _finish(remote: Remote, target: Path, part: Path, md5: str) -> None:
    """The complete part becomes `target` if its MD5 is the published one; else it goes."""
    if md5 != remote.md5:
        part.unlink(missing_ok=True)
        raise DrgradeError(f"{remote.url}: MD5 {md5} is not the published {remote.md5}; "
                           "the download was deleted (try again)")
    os.replace(part, target)


def _chunks(response, remote: Remote, target: Path, part: Path) -> Iterator[bytes]:
    """The response body, CHUNK bytes at a time; a connection lost half-way is reported."""
    while True:
        try:
            chunk = response.read(CHUNK)
        except (OSError, http.client.HTTPException) as error:
            # A DrgradeError here, or the caller would call it a write failure.
            raise _unreachable(remote, target, error, part) from None
        if not chunk:
            return
        yield chunk


def _unreachable(remote: Remote, target: Path, error: Exception,
                 part: Path | None = None) -> DrgradeError:
    reason = getattr(error, "reason", error)
    kept = (f" The bytes so far are kept in {part}: run this again to resume."
            if part is not None and part.is_file() else "")
    return DrgradeError(
        f"cannot download {remote.url}: {reason}.{kept} Offline? Fetch it on a connected "
        f"machine, put it at {target} and run this again to verify it."
    )


def md5_of(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, lambda: hashlib.md5(usedforsecurity=False)).hexdigest()


def _length(response) -> int | None:
    length = response.headers.get("Content-Length")
    return int(length) if length else None
