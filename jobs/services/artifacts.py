"""Models out: which of a job's artifacts (the files and folders jobs.runner records) can be downloaded, and the
download itself, streamed.

**What may leave the server.** An artifact downloads only when its path, resolved (every symlink followed), lies
inside its own job's run folder (RUNS_DIR/<job id>/, jobs.runner.run_dir) and is a regular file or a folder
there. So a tampered Artifact.path (``/etc``, another job's folder, ``runs/<id>/../<other id>``, a symlink out)
downloads nothing, and neither do the inputs a pipeline records beside what it made (the strong base and a given
pi_post are the job's models, not its output: listed, never downloadable). Who may is the job's business: a view
asks only for artifacts of a job the caller can see (jobs.selectors.job_get: its owner, and staff).

**Inside a folder.** Only regular files and folders are taken: a symlink (to a file or a folder, inside or out) is
skipped, never followed, and every file is opened with O_NOFOLLOW and checked to be a regular file once open, so
one swapped for a link after the walk is skipped too.

**Streamed.** A folder is a tar.gz made as it is sent: each file is read ``CHUNK`` bytes at a time, and compressed
bytes are handed on once about ``CHUNK`` of them are ready, so memory stays bounded by a few chunks whatever the
size of the model; nothing is written to disk either. (tarfile's ``addfile`` copies a whole member in one call, so
a multi-GB weights file would pile up in any buffer before a generator could hand it on; the tar headers are
tarfile's own, TarInfo.tobuf, and the gzip stream zlib's.) A file is sent as it is, in chunks. Under ASGI (daphne,
what the app runs) the chunks come from an async iterator, one chunk per step in a worker thread: Django's ASGI
handler would read a synchronous iterator into a list first, the whole archive in memory.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from asgiref.sync import sync_to_async

from jobs.models import Artifact, Job

CHUNK = 1 << 20  # bytes read from a file at a time, and about the most compressed bytes held before they are sent
ARCHIVE_TYPE = "application/gzip"
FILE_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class Target:
    """An artifact that can be downloaded: its resolved path and its name inside the job's run folder."""

    job_id: int
    path: Path
    name: str  # inside the run folder, e.g. dpo_cong/model, cd_generate/samples.jsonl
    is_dir: bool

    @property
    def filename(self) -> str:
        """The download's file name: job-<id>-<name, / as ->, and .tar.gz for a folder (job-7-dpo_cong-model.tar.gz)."""
        return f"job-{self.job_id}-" + self.name.replace("/", "-") + (".tar.gz" if self.is_dir else "")


def artifact_target(art: Artifact) -> Target | None:
    """Where ``art`` may be downloaded from, or None when it may not (see the module's rule)."""
    from jobs.runner import run_dir

    raw = Path(art.path)
    if not raw.is_absolute():  # the runner records absolute paths; anything else was not written by it
        return None
    root = run_dir(art.job).resolve()
    path = raw.resolve()
    if path == root or not path.is_relative_to(root):
        return None
    try:
        mode = path.stat().st_mode
    except OSError:  # gone (a deleted run folder)
        return None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return None
    name = path.relative_to(root).as_posix()
    return Target(job_id=art.job_id, path=path, name=name, is_dir=stat.S_ISDIR(mode))


@dataclass(frozen=True)
class Listed:
    """One artifact as the listing shows it: the row, and where and how big its download is (None: not one)."""

    artifact: Artifact
    target: Target | None
    size_bytes: int | None


def job_artifacts(job: Job) -> list[Listed]:
    """Every artifact ``job`` recorded, in the order recorded, with its download when it has one."""
    out = []
    for art in job.artifacts.all():
        target = artifact_target(art)
        out.append(Listed(art, target, target_size(target) if target else None))
    return out


def target_size(target: Target) -> int:
    """Bytes of the file, or of the regular files a folder's download holds (before compression)."""
    if not target.is_dir:
        return target.path.stat().st_size
    return sum(os.lstat(p).st_size for _, p in _walk(target.path) if p is not None)


def _walk(root: Path) -> Iterator[tuple[str, Path | None]]:
    """(path inside ``root`` with / separators, the file; None for a folder) in a stable order: the folder itself
    first, then each folder's files, then its subfolders. Symlinks and anything that is not a regular file or a
    folder are left out, and the walk never enters a linked folder."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not (here / d).is_symlink())
        yield here.relative_to(root).as_posix(), None
        for f in sorted(filenames):
            p = here / f
            if stat.S_ISREG(os.lstat(p).st_mode):
                yield p.relative_to(root).as_posix(), p


def _open_regular(path: Path):
    """The file opened for reading without following a link, or None when it is no longer a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # gone, or a symlink now (ELOOP)
        return None
    fh = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        fh.close()
        return None
    return fh


def _header(name: str, *, size: int = 0, mtime: float = 0, is_dir: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.mode = 0o755 if is_dir else 0o644
    info.size, info.mtime = size, int(mtime)
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def tar_gz_chunks(target: Target) -> Iterator[bytes]:
    """The folder as a gzip-compressed tar, in chunks of about CHUNK bytes, made while it is read. Its members sit
    under one folder named after the download (job-<id>-<stage>-model/), so it unpacks into a folder of its own."""
    top = target.filename.removesuffix(".tar.gz")
    gz = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: the gzip container (header, CRC, size)
    pending = bytearray()
    written = 0  # uncompressed tar bytes so far (the end is padded to tar's record size)

    def put(data: bytes) -> None:
        nonlocal written
        pending.extend(gz.compress(data))
        written += len(data)

    for rel, path in _walk(target.path):
        name = top if rel == "." else f"{top}/{rel}"
        if path is None:
            put(_header(name, mtime=(target.path / rel).stat().st_mtime, is_dir=True))
            continue
        fh = _open_regular(path)
        if fh is None:
            continue
        with fh:
            st = os.fstat(fh.fileno())
            put(_header(name, size=st.st_size, mtime=st.st_mtime))
            left = st.st_size
            while left:
                data = fh.read(min(CHUNK, left))
                if not data:  # the header promised st_size bytes: a short member would corrupt the rest
                    raise OSError(f"{path} shrank while it was being sent")
                left -= len(data)
                put(data)
                if len(pending) >= CHUNK:
                    yield bytes(pending)
                    pending.clear()
            put(tarfile.NUL * (-st.st_size % tarfile.BLOCKSIZE))
    put(tarfile.NUL * (2 * tarfile.BLOCKSIZE))  # the end-of-archive marker
    put(tarfile.NUL * (-written % tarfile.RECORDSIZE))
    pending.extend(gz.flush())
    yield bytes(pending)


def file_chunks(target: Target) -> Iterator[bytes]:
    """The file as it is, CHUNK bytes at a time."""
    fh = _open_regular(target.path)
    if fh is None:
        raise FileNotFoundError(target.name)
    with fh:
        while data := fh.read(CHUNK):
            yield data


async def as_async(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """The same chunks for an ASGI server, each read in a worker thread as the previous one is sent; the reading is
    closed (its file with it) when the client goes away."""

    def step() -> bytes | None:
        return next(chunks, None)  # the iterators here never yield None

    try:
        while (chunk := await sync_to_async(step, thread_sensitive=False)()) is not None:
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            await sync_to_async(close, thread_sensitive=False)()
