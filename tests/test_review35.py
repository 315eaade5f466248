"""Review 35: what the attacker's review of data34 and misc34 found in the files a copy leaves."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from stockyard.store import files


def test_a_copy_left_by_a_former_process_with_this_pid_is_removed(tmp_path: Path) -> None:
    """A server killed while sealing a snapshot (a restore, a backup: every copy made beside its file)
    leaves ``.<name>.tmp-<pid>-<thread>``, removed by the next process whose pid is not that one's. In
    a container the server is pid 1 every time, so its copies were taken for its own and kept for
    ever, a whole database each; a name of this pid that this process did not make is a former one's."""
    dest = tmp_path / "snap.db"
    leftover = tmp_path / f".snap.db.tmp-{os.getpid()}-12345"
    leftover.write_bytes(b"a whole copy of the database")
    made = files.copy_beside(dest, "tmp")
    assert not leftover.exists()
    made.write_bytes(b"a copy being written")
    journal = made.with_name(made.name + "-journal")
    journal.write_bytes(b"its journal")
    other: list[Path] = []
    thread = threading.Thread(target=lambda: other.append(files.copy_beside(dest, "tmp")))
    thread.start()
    thread.join()
    assert made.exists() and journal.exists() and other[0] != made  # this process's own, another thread's, kept
