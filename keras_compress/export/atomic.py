"""Atomic placement of exported files: nothing half-written, nothing of the user's destroyed.

Every export is written into a temporary folder next to its target, named after the process that
owns it (`.kc-export-<pid>-<random>`), and moved into place only when it is complete:

- `staging_folder` makes that folder and removes it afterwards, whatever happened; it first removes
  the folders that killed runs left in the same place (their process is gone). A process that ends
  during an export removes its staging folders on the way out where it can: at interpreter exit
  (`atexit`: `sys.exit`, the end of the main thread while an export runs in another one) and, for an
  export in the main thread, on SIGTERM and SIGHUP when the process has no handler of its own for them
  (the handler removes the folders, then ends the process by the same signal). A SIGKILL cannot be
  caught: the next export to the same folder removes what it left;
- `replace_together` moves a group of files into place (the `.xml` and `.bin` of an IR) so that
  either all of them are new or, after a failure, all of them are what they were;
- `check_file_target` / `check_folder_target` refuse, before any work, a target that exists as the
  wrong kind of thing, and a folder that holds anything but what an export writes there.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

__all__ = [
    "STAGING_PREFIX",
    "check_file_target",
    "check_folder_target",
    "remove_stale_staging",
    "replace_together",
    "staging_folder",
]

#: Name prefix of the temporary folders exports write into.
STAGING_PREFIX = ".kc-export-"
#: Signals that end a process without running Python's clean-up (no exception is raised) when their handler
#: is the default one; SIGINT raises KeyboardInterrupt, and `staging_folder`'s own clean-up runs.
TERMINATING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
#: The staging folders of this process that exist now.
_LIVE: set[Path] = set()


def _remove_live_staging() -> None:
    """Removes this process's staging folders (at exit, or before a terminating signal ends it)."""
    for folder in list(_LIVE):
        shutil.rmtree(folder, ignore_errors=True)
        _LIVE.discard(folder)


atexit.register(_remove_live_staging)


def _end_by_signal(signum, frame):
    """A terminating signal arrived during an export: remove the staging folders, then end as the signal would."""
    _remove_live_staging()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


@contextlib.contextmanager
def _removed_on_termination():
    """While the block runs in the main thread, SIGTERM and SIGHUP remove the staging folders before they end
    the process. Only signals with the default handler are taken over, and their handlers are put back after."""
    taken = {}
    if threading.current_thread() is threading.main_thread():
        for signum in TERMINATING_SIGNALS:
            if signal.getsignal(signum) == signal.SIG_DFL:
                taken[signum] = signal.signal(signum, _end_by_signal)
    try:
        yield
    finally:
        for signum, handler in taken.items():
            if signal.getsignal(signum) is _end_by_signal:
                signal.signal(signum, handler)


def _owner_alive(folder: Path) -> bool:
    """Whether the process named in a staging folder's name still runs (unknown: assume it does)."""
    try:
        pid = int(folder.name[len(STAGING_PREFIX):].split("-", 1)[0])
    except ValueError:
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # no permission to signal it: it exists
        return True
    return True


def remove_stale_staging(parent: Path) -> list[Path]:
    """Removes the staging folders in `parent` whose process is gone (a killed export).

    Returns:
        The folders removed.
    """
    removed = []
    for folder in Path(parent).glob(f"{STAGING_PREFIX}*"):
        if folder.is_dir() and not folder.is_symlink() and not _owner_alive(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@contextlib.contextmanager
def staging_folder(parent: Path):
    """A new temporary folder in `parent`, removed on exit (also after an exception, at interpreter exit, and on
    SIGTERM or SIGHUP in the main thread: see the module's docstring).

    Stale staging folders of killed runs in `parent` are removed first.
    """
    remove_stale_staging(parent)
    with _removed_on_termination():
        folder = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=parent))
        _LIVE.add(folder)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            _LIVE.discard(folder)


def check_file_target(path: Path, what: str) -> None:
    """Raises `IsADirectoryError` when `path` exists and is not a regular file."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise IsADirectoryError(
            f"The {what} target must be a file path (an existing file is replaced). "
            f"Received: {str(path)!r}, which is an existing {'link' if path.is_symlink() else 'directory'}."
        )


def check_folder_target(path: Path, what: str, allowed: tuple[str, ...]) -> None:
    """Raises when `path` exists as something `what` cannot replace.

    A regular file (`NotADirectoryError`), or a folder holding anything else than the entries
    `allowed` (`FileExistsError`: those are the user's files). An empty folder, or one that holds
    only `allowed` entries (a previous export), may be replaced.
    """
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise NotADirectoryError(
            f"The {what} target must be a folder path. Received: {str(path)!r}, which is an "
            f"existing {'link' if path.is_symlink() else 'file'}; it is left as it is."
        )
    if path.is_dir():
        others = sorted(entry.name for entry in path.iterdir() if entry.name not in allowed)
        if others:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            raise FileExistsError(
                f"The {what} target folder must be new, empty, or a previous {what} (holding only "
                f"{', '.join(allowed)}). Received: {str(path)!r}, which holds {shown}; nothing was "
                "replaced. Choose another path or empty the folder."
            )


def replace_together(moves: list[tuple[Path, Path]], backup: Path) -> None:
    """Moves `(new, target)` files or folders into place as one group.

    Existing targets are first moved into `backup` (a folder on the same file system); if any move
    fails, the new entries already placed are taken away and the previous ones put back, so the
    targets are either all new or all as they were. The previous entries are left in `backup`
    (a staging folder, removed by its owner).

    Raises:
        OSError: what the failing move raised, after the rollback.
    """
    saved, placed = [], []
    try:
        for index, (_, target) in enumerate(moves):
            if target.exists() or target.is_symlink():
                kept = backup / f"previous-{index}-{target.name}"
                os.replace(target, kept)
                saved.append((kept, target))
        for new, target in moves:
            os.replace(new, target)
            placed.append(target)
    except BaseException:
        for target in placed:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    target.unlink()
        for kept, target in saved:
            with contextlib.suppress(OSError):
                os.replace(kept, target)
        raise
