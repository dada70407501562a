"""An image folder inside a tar archive (.tar.gz, .tgz, .tar), read in one pass and never unpacked.

Unpacking CIFAR-10's 60,000 JPEGs cost about 40 s of file-system time on these machines before one image was
decoded, and left 236 MB in the cache; reading the members into memory costs the decompression alone. The folder
is laid out as an unpacked copy would be: a single top-level folder (other than test/) is the dataset's root.
"""
from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from compressor.errors import CompressorError, first_line

Parts = tuple[str, ...]


class ArchiveFolder:
    """The archive's folders and its image files' bytes, addressed by path parts relative to the archive."""

    def __init__(self, archive: Path, images: dict[Parts, bytes], folders: set[Parts]) -> None:
        self.archive, self._images, self._folders = archive, images, folders

    @classmethod
    def read(cls, archive: Path, image_suffixes: set[str]) -> ArchiveFolder:
        images: dict[Parts, bytes] = {}
        folders: set[Parts] = set()
        try:
            with tarfile.open(archive) as tar:
                for member in tar:
                    parts = PurePosixPath(member.name).parts
                    if not parts or parts[0] == "/" or ".." in parts:
                        continue  # outside the folder: not part of the dataset (and never written anywhere)
                    if member.isdir():
                        folders.add(parts)
                    elif member.isfile():
                        folders.update(parts[:i] for i in range(1, len(parts)))
                        if PurePosixPath(parts[-1]).suffix.lower() in image_suffixes:
                            images[parts] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            reason = first_line(exc).rstrip(":")  # tarfile's message spans lines
            raise CompressorError(f"{archive} could not be read as a tar archive of an image folder ({reason})") from None
        return cls(archive, images, folders)

    def root(self) -> Parts:
        """The dataset's folder: the archive's only top-level folder, unless that is test/ itself."""
        top = [f for f in self._folders if len(f) == 1]
        return top[0] if len(top) == 1 and top[0] != ("test",) else ()

    def is_folder(self, parts: Parts) -> bool:
        return parts in self._folders

    def subfolders(self, parts: Parts) -> list[str]:
        return _names_in(self._folders, parts)

    def image_names(self, parts: Parts) -> list[str]:
        return _names_in(self._images, parts)

    def open(self, parts: Parts) -> io.BytesIO:
        return io.BytesIO(self._images[parts])

    def name_of(self, parts: Parts) -> str:
        """How an error names a member: the archive, then the member's path inside it."""
        return f"{self.archive}:{'/'.join(parts)}"


def _names_in(paths: Iterable[Parts], folder: Parts) -> list[str]:
    """The sorted names of the paths directly inside `folder`."""
    return sorted(p[-1] for p in paths if len(p) == len(folder) + 1 and p[:-1] == folder)
