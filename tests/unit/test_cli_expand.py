"""What `docproc submit PATH...` uploads: files, folders and globs, each file once, in natural
order — and links to folders, below a folder or a `**`, not followed."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest

from service.cli.submit import Unreadable, _matching, expand


@pytest.fixture
def loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """loop/ holding three files, a link to one of them and a link to itself."""
    monkeypatch.chdir(tmp_path)
    folder = Path("loop")
    folder.mkdir()
    for name in ("a.txt", "b-10.txt", "b-2.txt"):
        (folder / name).write_text(name)
    (folder / "same.txt").symlink_to("a.txt")
    (folder / "x").symlink_to(".")
    return folder


def test_a_folder_holding_a_link_to_itself_gives_each_file_once(loop: Path) -> None:
    files = [loop / "a.txt", loop / "b-2.txt", loop / "b-10.txt"]

    assert expand(("loop/**",)) == files  # was each file 41 times: loop/x/x/…/a.txt
    assert expand(("loop",)) == files
    assert expand(("loop/same.txt", "loop/*", "loop/**/*.txt", "loop")) == files


@pytest.mark.timeout(5)
def test_two_links_to_itself_do_not_make_the_walk_endless(loop: Path) -> None:
    (loop / "y").symlink_to(".")  # two ways down at each level: glob's `**` walked 2^40 paths
    (loop / "sub").mkdir()
    (loop / "sub" / "up").symlink_to("..")

    assert expand(("loop/**", "**/*.txt")) == [loop / "a.txt", loop / "b-2.txt", loop / "b-10.txt"]


def test_globs_match_as_globs_do_where_no_link_leads_to_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("a/1.txt", "a/b/2.pdf", "a/b/c/3.txt", "a/.hidden/4.txt", "a/.5.txt", "6.txt"):
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text(name)
    Path("7.txt").symlink_to("6.txt")
    Path("gone.txt").symlink_to("nowhere")
    patterns = ["**", "**/", "**/*.txt", "a/**", "a/**/", "a/**/*.pdf", "*/**/c", "**/**/*.txt"]
    patterns += ["a/*", "*.txt", "a/b", "nothing", f"{glob.escape(os.getcwd())}/a/**/*.txt"]

    for pattern in patterns:
        expected = {Path(m) for m in glob.glob(pattern, recursive=True)}
        unwalked: list[Unreadable] = []
        assert {Path(m) for m in _matching(pattern, unwalked)} == expected, pattern
        assert unwalked == [], pattern
