"""Where a command will write, checked before it writes: one-line `UserError`s naming the path at fault."""

from __future__ import annotations

import os

import pytest

from autocompress.errors import UserError
from autocompress.paths import check_dir, check_file


def test_a_new_or_existing_directory_under_a_writable_one_passes(tmp_path):
    check_dir(tmp_path, "run_dir")
    check_dir(tmp_path / "a" / "b" / "c", "run_dir")
    check_file(tmp_path / "a" / "optuna.db", "storage")
    assert os.listdir(tmp_path) == []  # nothing created


def test_a_file_where_a_directory_goes(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="^run_dir is a file, not a directory; name a directory"):
        check_dir(tmp_path / "f", "run_dir")
    with pytest.raises(UserError, match=f"^run_dir: '{tmp_path}/f' is a file, not a directory"):
        check_dir(tmp_path / "f" / "sub" / "run", "run_dir")
    with pytest.raises(UserError, match=f"^storage: '{tmp_path}/f' is a file, not a directory"):
        check_file(tmp_path / "f" / "optuna.db", "storage")
    with pytest.raises(UserError, match="^storage is a directory; name a file in it"):
        check_file(tmp_path, "storage")


def test_a_dangling_link(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(UserError, match="is a dangling symbolic link, not a directory"):
        check_dir(tmp_path / "link", "run_dir")
    with pytest.raises(UserError, match="is a dangling symbolic link, not a directory"):
        check_dir(tmp_path / "link" / "run", "run_dir")


def test_a_name_longer_than_the_file_system_takes(tmp_path):
    with pytest.raises(UserError, match=r"^run_dir: the name 'nnnn.*\.\.\. \(300 characters\) is 300 bytes, longer "
                                        r"than the file system's limit of 255; use a shorter name$"):
        check_dir(tmp_path / ("n" * 300) / "run", "run_dir")
    with pytest.raises(UserError, match="is 256 bytes"):  # bytes, not characters
        check_file(tmp_path / ("é" * 128), "storage")
    with pytest.raises(UserError, match="NUL"):
        check_dir(f"{tmp_path}/a\0b", "run_dir")


def test_an_unwritable_or_read_only_directory(tmp_path, monkeypatch):
    """Tests run as root, which writes anywhere, and there is no read-only mount to use: `os.access` and
    `os.statvfs` are patched for one directory to answer as they do for one the user cannot write, and for
    one on a read-only mount."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == str(ro) and mode & os.W_OK
                        else real_access(p, mode, **kw))
    with pytest.raises(UserError, match=f"^run_dir: '{ro}' is not writable by this user; choose a directory"):
        check_dir(ro / "a" / "run", "run_dir")
    real_statvfs = os.statvfs

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "statvfs", lambda p: ReadOnly() if os.fspath(p) == str(ro) else real_statvfs(p))
    with pytest.raises(UserError, match=f"^storage: '{ro}' is on a read-only file system; choose a directory"):
        check_file(ro / "optuna.db", "storage")
