"""`python -m factory.registry` on a folder and on S3 (moto's server on 127.0.0.1): what an operator sees
and does without Python, and every refusal saying why. Run as the operator runs it, in a subprocess."""

import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from conftest import REPO_ROOT
from factory import registry, registry_cli
from serve.registry_view import RegistryView
from serving import publish_random_family, publish_random_style


def cli(root: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "factory.registry", "--registry", root, *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture(params=["folder", "s3"])
def root(request, tmp_path) -> str:
    if request.param == "folder":
        return str(tmp_path / "registry")
    request.getfixturevalue("s3_server")
    bucket = f"cli-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/registry"


def test_rollback_is_a_pointer_switch_that_a_serving_view_follows_and_can_be_undone(root):
    versions = [publish_random_style(root, "alpha", seed=seed) for seed in range(3)]
    view = RegistryView(root, refresh_s=1, full_refresh_s=3600)
    assert view.styles["alpha"].version == versions[2]

    done = cli(root, "rollback", "alpha")
    assert done.returncode == 0, done.stderr
    assert f"{versions[2]} -> {versions[1]}" in done.stdout
    assert registry.current_version(root, "alpha") == versions[1] == registry.read_index_styles(root)["alpha"]["version"]
    view.refresh()  # the index now points back: an older version, but a newer pointer
    assert view.styles["alpha"].version == versions[1] and view.styles["alpha"].metadata["steps"] == 1

    assert cli(root, "rollback", "alpha", versions[2]).returncode == 0  # and forward again
    view.refresh()
    assert view.styles["alpha"].version == versions[2]
    shown = cli(root, "show", "alpha").stdout.splitlines()
    assert shown[1].startswith(f"* {versions[2]}") and [line.split()[0] for line in shown[2:]] == versions[1::-1]
    assert registry_cli.versions_oldest_first(root, "alpha") == versions
    assert "alpha" in cli(root, "list").stdout and "3 version(s)" in cli(root, "list").stdout


def test_prune_keeps_the_newest_the_current_and_every_family_version_a_kept_style_points_at(root):
    alpha = [publish_random_style(root, "alpha", seed=seed) for seed in range(3)]
    first_family = publish_random_family(root, ("fa", "fb"), seed=0, family="fam")
    second_family = publish_random_family(root, ("fa", "fb"), seed=1, family="fam")
    third_family = publish_random_family(root, ("fa", "fb"), seed=2, family="fam")
    assert cli(root, "rollback", "alpha", alpha[0]).returncode == 0  # the current one is the oldest
    assert cli(root, "rollback", "fb", first_family["fb"]).returncode == 0  # on the first family version
    family_versions = registry_cli.family_versions_oldest_first(root, "fam")

    dry = cli(root, "prune", "--keep", "1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert registry_cli.versions_oldest_first(root, "alpha") == alpha  # a dry run deletes nothing...
    assert f"would delete {registry.version_uri(root, 'alpha', alpha[1])}" in dry.stdout  # ...and says what it would
    assert registry_cli.family_versions_oldest_first(root, "fam") == family_versions

    done = cli(root, "prune", "--keep", "1")
    assert done.returncode == 0, done.stderr
    # Versions published within one second: their names alone do not say which is newer.
    assert registry_cli.versions_oldest_first(root, "alpha") == [alpha[0], alpha[2]]  # the current one and the newest
    assert registry.list_versions(root, "fa") == [third_family["fa"]]
    assert registry_cli.versions_oldest_first(root, "fb") == [first_family["fb"], third_family["fb"]]
    # The family's first version stays (fb's current points at it), its second goes, its newest stays.
    assert registry_cli.family_versions_oldest_first(root, "fam") == [family_versions[0], family_versions[2]]
    for style in ("alpha", "fa", "fb"):
        net, _ = registry.load_model(root, style)  # every current version still loads, family network included
    assert registry.version_uri(root, "fa", second_family["fa"]) in done.stdout
    assert "nothing to prune" in cli(root, "prune", "--keep", "1").stdout


def test_withdraw_stops_publishing_and_a_rollback_to_a_named_version_publishes_again(root):
    version = publish_random_style(root, "alpha", seed=0)
    publish_random_style(root, "beta", seed=1)
    done = cli(root, "withdraw", "alpha")
    assert done.returncode == 0 and "withdrawn" in done.stdout
    assert registry.list_styles(root) == ["beta"] and "alpha  withdrawn" in cli(root, "list").stdout
    again = cli(root, "withdraw", "alpha")
    assert again.returncode == 2 and "not published" in again.stderr
    assert cli(root, "rollback", "alpha", version).returncode == 0
    assert registry.list_styles(root) == ["alpha", "beta"]


@pytest.mark.parametrize("args, says", [
    (("rollback", "alpha", "20990101T000000Z-abcdef"), "has no version '20990101T000000Z-abcdef'; it has: "),
    (("rollback", "beta"), "no version before its current"),
    (("rollback", "gamma"), "no published style 'gamma'"),
    (("show", "gamma"), "no style 'gamma'"),
    (("rollback", "../alpha"), "style name"),
    (("prune", "--keep", "0"), "--keep must be at least 1"),
])
def test_every_refusal_says_why_and_changes_nothing(tmp_path, args, says):
    root = str(tmp_path / "registry")
    alpha = [publish_random_style(root, "alpha", seed=seed) for seed in range(2)]
    publish_random_style(root, "beta", seed=2)
    done = cli(root, *args)
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert registry.current_version(root, "alpha") == alpha[1] and registry_cli.versions_oldest_first(root, "alpha") == alpha


def test_a_registry_that_is_not_there_is_named(tmp_path):
    done = cli(str(tmp_path / "nowhere"), "list")
    assert done.returncode == 2 and "no registry at" in done.stderr and "--registry" in done.stderr


def test_the_documented_commands_run_as_written_on_a_registry(tmp_path):
    """docs/operations.md's block, in order, from bash: its export names this test's registry and its
    named version is starry_night's older one (the page's two edits); every command must succeed."""
    import re

    from conftest import REPO_ROOT

    root = str(tmp_path / "registry")
    versions = [publish_random_style(root, "starry_night", seed=seed) for seed in range(3)]
    block = re.search(r"## The registry from a shell\n\n```bash\n(.*?)```", (REPO_ROOT / "docs" / "operations.md").read_text(), re.DOTALL).group(1)
    block = re.sub(r"^export REGISTRY=\S+", f"export REGISTRY={root}", block, flags=re.MULTILINE)
    block = re.sub(r"rollback starry_night \d{8}T\d{6}Z-[0-9a-f]{6}", f"rollback starry_night {versions[2]}", block)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"{versions[2]} -> {versions[1]}" in done.stdout and "would delete" not in done.stdout  # one style, withdrawn: nothing past 3
    assert registry.list_styles(root) == [] and registry_cli.versions_oldest_first(root, "starry_night") == versions
