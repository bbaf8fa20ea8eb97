"""Downloads never travel with the code: ray job submit --working-dir and ray up honour .gitignore."""

import shutil
import subprocess

import pytest

from conftest import REPO_ROOT


@pytest.mark.parametrize("path", ["data/.downloads/train2014.zip", "data/imagenet-vgg-verydeep-19.mat.part",
                                  "data/.downloads/vgg19.pth.part", "data/imagenet-vgg-verydeep-19.mat.unverified",
                                  "data/vgg19.pth.part.validator", "data/.downloads/train2014.zip.corrupt",
                                  "data/train2014/COCO_train2014_000000000009.jpg", "data/registry/a/current.json"])
def test_downloads_and_run_outputs_are_ignored(path):
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout")
    assert subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO_ROOT).returncode == 0, path
