"""Import the pyz's modules, and read its data files, from one open zip.

Python's own zipimport reads each module's code twice (``find_spec`` asks ``get_filename``,
which loads the code; ``exec_module`` loads it again) and opens the archive for every read;
``importlib.resources`` parses the zip's whole directory again on every ``files()`` call.
``serve`` imports every module at start (:func:`stockyard.cli.serve.preload`), so that was a
fifth of its start time. :func:`install` reads the directory once, keeps the file open and
serves modules (their bytecode, built beside each source by build_zipapp.py) and package
files from it.

Reads use ``os.pread``, never a shared file position: ``--workers`` forks the server after the
file is open, and the workers read data files (migrations) at the same time. The open file
also keeps a pyz replaced on disk during an upgrade readable to the running server.

Outside a zip (a dev checkout) nothing is installed and Python's usual import runs.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import io
import marshal
import os
import struct
import sys
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from importlib.machinery import ModuleSpec
from importlib.resources.abc import Traversable
from types import CodeType, ModuleType

# The bundled native modules are unpacked to disk and imported from there (stockyard._native).
_SKIP = "_native/"
_LOCAL_HEADER = struct.Struct("<4s22sHH")  # signature, fixed fields, name length, extra length
_PYC_HEADER = 16  # magic, flags, source hash (build_zipapp.bytecode_members)


class Archive:
    """The pyz's members, by name, read by offset from one open file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open(path, "rb")  # noqa: SIM115 - held open for the life of the process
        with zipfile.ZipFile(self._file) as directory:  # a passed file stays open
            self._members = {info.filename: info for info in directory.infolist() if not info.is_dir()}
        self._folders: dict[str, list[str]] = {}
        for name in self._members:
            folder, _, base = name.rpartition("/")
            self._folders.setdefault(folder, []).append(base)

    def __contains__(self, name: str) -> bool:
        return name in self._members

    def read(self, name: str) -> bytes:
        """A member's content; KeyError when there is no such member. OSError when the file does
        not hold what the directory read at start says (damaged, or written over in place since):
        checked by its header, its sizes within the file and its CRC, never other bytes."""
        info = self._members[name]
        fd = self._file.fileno()
        header = os.pread(fd, _LOCAL_HEADER.size, info.header_offset)
        start = end = -1
        if len(header) == _LOCAL_HEADER.size:
            signature, _, name_len, extra_len = _LOCAL_HEADER.unpack(header)
            start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
            end = start + info.compress_size if signature == b"PK\x03\x04" else -1
        if end < 0 or end > os.fstat(fd).st_size:  # a read past the end asks for a buffer that large
            raise OSError(f"{self.path}: damaged zip entry {name}")
        data = os.pread(fd, info.compress_size, start)
        if info.compress_type == zipfile.ZIP_DEFLATED:
            try:
                data = zlib.decompressobj(-15).decompress(data, info.file_size + 1)
            except zlib.error:
                data = b""
        elif info.compress_type != zipfile.ZIP_STORED:
            raise OSError(f"{self.path}: {name} uses a compression this reader does not know")
        if len(data) != info.file_size or zlib.crc32(data) != info.CRC:
            raise OSError(f"{self.path}: damaged zip entry {name}")
        return data

    def listing(self, folder: str) -> tuple[list[str], list[str]]:
        """(files, sub-folders) directly inside ``folder`` ("" for the top)."""
        prefix = folder + "/" if folder else ""
        subs = {f[len(prefix) :].split("/", 1)[0] for f in self._folders if f.startswith(prefix) and f != folder}
        return sorted(self._folders.get(folder, [])), sorted(subs)


class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A meta path finder and loader for the modules at the top of the archive."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive.path  # as zipimport's loader names it (stockyard._native reads it)
        self.zip = archive

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        source = self._locate(fullname)
        if source is None:
            return None
        package = source.endswith("/__init__.py")
        spec = ModuleSpec(fullname, self, origin=f"{self.archive}/{source}", is_package=package)
        if package:
            spec.submodule_search_locations = [f"{self.archive}/{source.rpartition('/')[0]}"]
        spec.has_location = True
        return spec

    def _locate(self, fullname: str) -> str | None:
        """The member path of the module's source (``x/__init__.py`` for a package, ``x.py``), which
        may stand only as its ``.pyc``; None when the archive has no such module to serve."""
        base = fullname.replace(".", "/")
        if base.startswith(_SKIP):
            return None
        for source in (base + "/__init__.py", base + ".py"):
            if source in self.zip or source + "c" in self.zip:
                return source
        return None

    def create_module(self, spec: ModuleSpec) -> None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        exec(self.get_code(module.__name__), module.__dict__)  # noqa: S102 - this is an import

    def _source_name(self, fullname: str) -> str:
        source = self._locate(fullname)
        if source is None:
            raise ImportError(f"no module {fullname} in {self.archive}", name=fullname)
        return source

    def get_code(self, fullname: str) -> CodeType:
        """The built bytecode when it is for this Python, else the source compiled."""
        source = self._source_name(fullname)
        if source + "c" in self.zip:
            data = self.zip.read(source + "c")
            if data[:4] == importlib.util.MAGIC_NUMBER:
                return marshal.loads(memoryview(data)[_PYC_HEADER:])
        return compile(self.zip.read(source), source, "exec", dont_inherit=True)

    def get_source(self, fullname: str) -> str | None:
        """For tracebacks (linecache asks the loader)."""
        try:
            return importlib.util.decode_source(self.zip.read(self._source_name(fullname)))
        except KeyError:
            return None

    def is_package(self, fullname: str) -> bool:
        return self._source_name(fullname).endswith("/__init__.py")

    def get_filename(self, fullname: str) -> str:
        return f"{self.archive}/{self._source_name(fullname)}"

    def get_data(self, path: str) -> bytes:
        """A member by its path under the archive (``pkgutil.get_data``); OSError when absent."""
        try:
            return self.zip.read(_member(self.zip, path))
        except KeyError:
            raise FileNotFoundError(path) from None

    def get_resource_reader(self, fullname: str) -> _Reader:
        return _Reader(self.zip, fullname.replace(".", "/"))


class _Reader:
    """What ``importlib.resources.files`` asks a loader for: the package's folder."""

    def __init__(self, archive: Archive, folder: str) -> None:
        self._root = Entry(archive, folder)

    def files(self) -> Entry:
        return self._root


class Entry(Traversable):
    """A file or folder inside the archive, as ``importlib.resources`` sees it."""

    def __init__(self, archive: Archive, name: str) -> None:
        self._archive = archive
        self._name = name

    @property
    def name(self) -> str:
        return self._name.rpartition("/")[2]

    def is_file(self) -> bool:
        return self._name in self._archive

    def is_dir(self) -> bool:
        files, subs = self._archive.listing(self._name)
        return bool(files or subs)

    def iterdir(self) -> Iterator[Entry]:
        files, subs = self._archive.listing(self._name)
        for base in sorted(files + subs):
            yield Entry(self._archive, f"{self._name}/{base}")

    def joinpath(self, *descendants: str) -> Entry:  # type: ignore[override]
        return Entry(self._archive, "/".join([self._name, *descendants]))

    def __truediv__(self, child: str) -> Entry:  # type: ignore[override]
        return self.joinpath(child)

    def read_bytes(self) -> bytes:
        try:
            return self._archive.read(self._name)
        except KeyError:
            raise FileNotFoundError(f"{self._archive.path}/{self._name}") from None

    def read_text(self, encoding: str | None = None) -> str:
        return self.read_bytes().decode(encoding or "utf-8")

    def open(self, mode: str = "r", *args: object, **kwargs: object) -> io.IOBase:  # type: ignore[override]
        data = self.read_bytes()
        return io.BytesIO(data) if "b" in mode else io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")


def _member(archive: Archive, path: str) -> str:
    prefix = archive.path + "/"
    if not path.startswith(prefix):
        raise FileNotFoundError(path)
    return path[len(prefix) :]


def install() -> None:
    """Serve imports from the pyz this module came from, before Python's own finders; nothing
    outside a zip, or when installed already."""
    path = getattr(globals().get("__loader__"), "archive", None)
    if path is None or any(isinstance(finder, Finder) for finder in sys.meta_path):
        return
    finder = Finder(Archive(path))
    at = next((i for i, f in enumerate(sys.meta_path) if f is importlib.machinery.PathFinder), len(sys.meta_path))
    sys.meta_path.insert(at, finder)
