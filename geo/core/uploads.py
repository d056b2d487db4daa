"""Bounded reading of uploaded files: spooling, compression sniffing, archive members.

Nothing here reads an unbounded body into memory.  An upload goes through
three steps, each with its own limit:

1. :class:`BodySpool` takes the body chunk by chunk as it arrives and refuses
   it (:class:`TooLarge`) the moment it passes the byte limit; small bodies
   stay in memory, large ones go to a temporary file.  It hashes as it goes.
   :class:`MultipartFile` does the same for the one file field of a
   ``multipart/form-data`` body.
2. :func:`sniff` names the container from its magic bytes (gzip, bzip2, zip
   or plain), whatever content type the client declared.
3. :func:`members` opens what is inside as readable streams whose
   *decompressed* bytes count against a second limit, shared by all members,
   so a gzip or zip bomb stops after at most that many bytes with bounded
   memory.

The module knows nothing about GPX or HTTP frameworks, so any importer
(GPX traces, vector files) can use it.

>>> spool = BodySpool(limit=10)
>>> spool.write(b"<gpx/>")
>>> body = spool.finish()
>>> body.size, sniff(body.file)
(6, 'plain')
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import hashlib
import io
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Literal

from python_multipart.multipart import MultipartParser, parse_options_header

from geo.core import errors

__all__ = [
    "SPOOL_MEMORY_BYTES",
    "BadArchive",
    "BodySpool",
    "LimitedReader",
    "Member",
    "MultipartFile",
    "MultipartError",
    "SpooledBody",
    "TooLarge",
    "UploadError",
    "members",
    "no_space",
    "out_of_space",
    "read_all",
    "spool_stream",
    "sniff",
    "use_spool_dir",
]

#: Bodies up to this size stay in memory; larger ones are spooled to a temp file.
SPOOL_MEMORY_BYTES = 4 * 1024 * 1024
#: How much a decompressing reader asks for at a time.
CHUNK = 256 * 1024

Container = Literal["gzip", "bzip2", "zip", "plain"]

_MAGIC: tuple[tuple[bytes, Container], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),  # an empty archive
)


class UploadError(errors.BadRequest):
    """A problem with the uploaded bytes themselves (the client's fault): a 400."""

    slug = "invalid-upload"


class TooLarge(errors.TooLarge):
    """More bytes than the limit allows.

    Attributes
    ----------
    limit
        The limit in bytes.
    what
        ``"body"`` for the upload as sent, ``"decompressed"`` for its content.
    """

    def __init__(self, limit: int, what: str = "body") -> None:
        mb = limit / (1024 * 1024)
        if what == "decompressed":
            message = f"the decompressed content is larger than the limit of {mb:g} MB"
        else:
            message = f"the upload is larger than the limit of {mb:g} MB"
        super().__init__(message, limit_bytes=limit)
        self.limit = limit
        self.what = what


def no_space(exc: BaseException) -> bool:
    """Whether ``exc`` is the disk (or the user's quota) being full."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def out_of_space() -> errors.InsufficientStorage:
    """The 507 answer to a full staging area, naming the cause and the setting."""
    return errors.InsufficientStorage(
        "the server has no space left to stage this upload (insufficient storage in "
        f"{tempfile.gettempdir()}); nothing was kept: retry later, or ask the operator to free "
        "space or point MAKAZI_SPOOL_DIR at a larger disk",
        slug="insufficient-storage",
    )


def use_spool_dir(folder: Path | None) -> None:
    """Stage uploads, unpacked archives and exports' work files in ``folder``.

    ``None`` keeps the system's temporary folder (``TMPDIR``).  Every temporary
    file of the process goes there, so one setting bounds where they can fill.
    """
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.tempdir = str(folder)


class BadArchive(UploadError):
    """A gzip, bzip2 or zip container that cannot be read."""


class MultipartError(UploadError):
    """A ``multipart/form-data`` body that is malformed or lacks the file field."""


@dataclass
class SpooledBody:
    """A received body: a file positioned at 0, its size and SHA-256."""

    file: IO[bytes]
    size: int
    sha256: str

    def close(self) -> None:
        """Release the memory or temp file."""
        self.file.close()


class BodySpool:
    """Collect a body as it arrives, refusing it as soon as it passes ``limit``.

    Parameters
    ----------
    limit
        Maximum number of bytes.
    memory_bytes
        Keep the body in memory up to this size, then move it to a temp file.
    """

    def __init__(self, *, limit: int, memory_bytes: int = SPOOL_MEMORY_BYTES) -> None:
        self.limit = limit
        self.size = 0
        self._hash = hashlib.sha256()
        # Closed by finish()'s caller (SpooledBody.close) or abort().
        self._file: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=memory_bytes)  # noqa: SIM115

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; raises :class:`TooLarge` before storing past the limit."""
        if not chunk:
            return
        if self.size + len(chunk) > self.limit:
            self._file.close()
            raise TooLarge(self.limit)
        try:
            self._file.write(chunk)
        except OSError as exc:
            self._fail(exc)
        self.size += len(chunk)
        self._hash.update(chunk)

    def _fail(self, exc: OSError) -> None:
        """Drop the spool after a failed write; a full disk becomes a 507."""
        with contextlib.suppress(OSError):  # closing flushes, and may fail the same way
            self._file.close()  # an unnamed temporary file: closing frees its space
        if no_space(exc):
            raise out_of_space() from exc
        raise exc

    def finish(self) -> SpooledBody:
        """The collected body, rewound (buffered bytes reach the disk here)."""
        try:
            self._file.flush()
            self._file.seek(0)
        except OSError as exc:
            self._fail(exc)
        return SpooledBody(file=self._file, size=self.size, sha256=self._hash.hexdigest())

    def abort(self) -> None:
        """Drop what was collected."""
        self._file.close()


def spool_stream(stream: IO[bytes], *, limit: int) -> SpooledBody:
    """Read a local file or buffer into a :class:`SpooledBody` (CLI, demo, benchmarks)."""
    spool = BodySpool(limit=limit)
    try:
        while chunk := stream.read(CHUNK):
            spool.write(chunk)
    except BaseException:
        spool.abort()
        raise
    return spool.finish()


class MultipartFile:
    """Stream one file field out of a ``multipart/form-data`` body into a spool.

    Parameters
    ----------
    content_type
        The request's ``Content-Type`` header (it carries the boundary).
    field
        Name of the file field to keep; other parts are read and discarded.
    spool
        Where the field's bytes go (its limit applies to the file).
    body_limit
        Limit on the whole body, parts and headers included.

    Raises
    ------
    MultipartError
        No boundary, malformed framing, or (from :meth:`finish`) no such field.
    TooLarge
        The file or the whole body passes its limit.
    """

    def __init__(self, content_type: str, *, field: str, spool: BodySpool, body_limit: int) -> None:
        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if not boundary:
            raise MultipartError("the multipart/form-data Content-Type has no boundary")
        self.field = field
        self.spool = spool
        self.body_limit = body_limit
        self.received = 0
        self.found = False
        self.filename: str | None = None
        self._in_field = False
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._part_begin,
                "on_part_data": self._part_data,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value_cb,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
            },
        )

    def _part_begin(self) -> None:
        self._headers = {}
        self._in_field = False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = b""
        self._header_value = b""

    def _headers_finished(self) -> None:
        disposition = self._headers.get(b"content-disposition", b"")
        _, params = parse_options_header(disposition)
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name == self.field and not self.found:
            self.found = True
            self._in_field = True
            raw = params.get(b"filename")
            self.filename = raw.decode("utf-8", "replace") if raw else None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_field:
            self.spool.write(data[start:end])

    def feed(self, chunk: bytes) -> None:
        """Parse the next chunk of the body."""
        self.received += len(chunk)
        if self.received > self.body_limit:
            self.spool.abort()
            raise TooLarge(self.body_limit)
        try:
            self._parser.write(chunk)
        except errors.MakaziError:  # too large, or no space left to stage it
            raise
        except Exception as exc:  # python-multipart raises its own error types
            raise MultipartError(f"malformed multipart/form-data body: {exc}") from exc

    def finish(self) -> SpooledBody:
        """The file field's bytes, rewound."""
        try:
            self._parser.finalize()
        except Exception as exc:
            raise MultipartError(f"malformed multipart/form-data body: {exc}") from exc
        if not self.found:
            self.spool.abort()
            raise MultipartError(f"the multipart/form-data body has no field named {self.field!r}")
        return self.spool.finish()


def sniff(file: IO[bytes]) -> Container:
    """Name the container of ``file`` from its first bytes; the position is kept.

    >>> sniff(io.BytesIO(b"\\x1f\\x8b\\x08rest")), sniff(io.BytesIO(b"PK\\x03\\x04..."))
    ('gzip', 'zip')
    """
    position = file.tell()
    head = file.read(8)
    file.seek(position)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return "plain"


class LimitedReader(io.RawIOBase):
    """A readable stream that counts bytes against a shared budget.

    Parameters
    ----------
    source
        Where the bytes come from (a decompressing stream, usually).
    budget
        A one-element list holding the bytes still allowed; shared by every
        member of one upload, so the limit applies to their sum.
    limit
        The total limit, for the error message.
    """

    def __init__(self, source: IO[bytes], budget: list[int], limit: int) -> None:
        super().__init__()
        self._source = source
        self._budget = budget
        self._limit = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        # Ask for one byte more than the budget so that passing it is noticed.
        want = min(len(buffer), self._budget[0] + 1)
        try:
            data = self._source.read(want)
        except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as exc:
            raise BadArchive(f"the compressed data is damaged: {exc}") from exc
        if len(data) > self._budget[0]:
            raise TooLarge(self._limit, "decompressed")
        self._budget[0] -= len(data)
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        """Read and discard the rest (to learn whether it passes the limit)."""
        while self.read(CHUNK):
            pass


@dataclass
class Member:
    """One file inside an upload: its name (``None`` when not an archive) and stream."""

    name: str | None
    stream: LimitedReader


def _gzip_stream(file: IO[bytes]) -> IO[bytes]:
    return gzip.GzipFile(fileobj=file, mode="rb")  # type: ignore[return-value]


def _bzip2_stream(file: IO[bytes]) -> IO[bytes]:
    return bz2.BZ2File(file, mode="rb")


def members(
    file: IO[bytes],
    *,
    limit: int,
    max_members: int = 100,
    suffixes: tuple[str, ...] = (),
) -> Iterator[Member]:
    """The files in an upload, decompressed, with ``limit`` on their total size.

    A gzip or bzip2 body is one member; a zip archive yields each regular
    file (directories and ``__MACOSX/`` metadata are skipped, and so are
    names not ending in one of ``suffixes`` when suffixes are given); a
    gzipped member of a zip is decompressed too.  A plain body is one member.

    Parameters
    ----------
    file
        A seekable file positioned at the start (e.g. :attr:`SpooledBody.file`).
    limit
        Maximum decompressed bytes of all members together.
    max_members
        Maximum number of files in an archive.

    Raises
    ------
    TooLarge
        While reading a member, once the decompressed total passes ``limit``.
    BadArchive
        A damaged or encrypted archive, or too many members.
    """
    budget = [limit]
    kind = sniff(file)
    if kind == "plain":
        yield Member(None, LimitedReader(file, budget, limit))
        return
    if kind == "gzip":
        yield Member(None, LimitedReader(_gzip_stream(file), budget, limit))
        return
    if kind == "bzip2":
        yield Member(None, LimitedReader(_bzip2_stream(file), budget, limit))
        return
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise BadArchive(f"not a readable zip archive: {exc}") from exc
    with archive:
        infos = [
            info
            for info in archive.infolist()
            if not info.is_dir()
            and not info.filename.startswith("__MACOSX/")
            and (not suffixes or info.filename.lower().endswith(suffixes))
        ]
        if len(infos) > max_members:
            raise BadArchive(
                f"the zip archive holds {len(infos)} files; the limit is {max_members}"
            )
        for info in infos:
            if info.flag_bits & 0x1:
                raise BadArchive(f"zip member {info.filename!r} is encrypted")
            try:
                with archive.open(info) as probe:
                    head = probe.read(2)
                stream: IO[bytes] = archive.open(info)
            except (zipfile.BadZipFile, NotImplementedError, OSError, zlib.error) as exc:
                raise BadArchive(f"cannot open zip member {info.filename!r}: {exc}") from exc
            if head == b"\x1f\x8b":
                stream = _gzip_stream(stream)
            try:
                yield Member(info.filename, LimitedReader(stream, budget, limit))
            finally:
                stream.close()


def read_all(stream: BinaryIO | LimitedReader, chunk: int = CHUNK) -> Iterator[bytes]:
    """The chunks of ``stream`` until it ends."""
    while True:
        data = stream.read(chunk)
        if not data:
            return
        yield data
