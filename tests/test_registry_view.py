"""What the front door sees of a registry on S3 (moto's server on 127.0.0.1), and what the pool loads from it."""

import shutil
import threading
import time
from pathlib import Path

import boto3
import pytest
import torch

from factory import registry
from serve.registry_view import ListingCopy, RegistryUnreadable, RegistryView, parse_model_id
from serve.style_model import StyleModel
from serving import publish_random_style


def test_a_refresh_sees_new_and_retrained_styles_on_s3_but_never_a_half_written_one(s3_server, tmp_path):
    boto3.client("s3").create_bucket(Bucket="view")
    uri = "s3://view/registry"
    first = publish_random_style(uri, "alpha", seed=0)
    view = RegistryView(uri, refresh_s=1)
    assert {name: style.version for name, style in view.styles.items()} == {"alpha": first}

    retrained = publish_random_style(uri, "alpha", seed=1)
    publish_random_style(uri, "beta", seed=2)
    half_written = publish_random_style(str(tmp_path), "gamma", seed=3)  # every file but current.json, as mid-publish
    for filename in (registry.MODEL_FILE, registry.METADATA_FILE, registry.THUMBNAIL_FILE, registry.PREVIEW_FILE):
        boto3.client("s3").upload_file(str(tmp_path / "gamma" / "versions" / half_written / filename), "view",
                                       f"registry/gamma/versions/{half_written}/{filename}")
    view.refresh()

    assert sorted(view.styles) == ["alpha", "beta"]
    assert view.styles["alpha"].version == retrained != first and view.styles["alpha"].metadata["steps"] == 1
    assert "source" not in view.styles["beta"].metadata["loss_network"]  # never where weights live
    assert view.picture("beta", registry.THUMBNAIL_FILE).startswith(b"\xff\xd8")
    assert view.picture("beta", registry.MODEL_FILE) is None and view.picture("gamma", registry.THUMBNAIL_FILE) is None

    reference = parse_model_id(view.styles["alpha"].model_id)  # what a pool replica loads for a request
    assert not reference.is_family
    model = StyleModel(uri, reference.name, reference.version)
    assert model.metadata["version"] == retrained
    assert model.forward_by_size([torch.rand(3, 16, 16) * 255])[0].shape == (3, 16, 16)


class S3Calls:
    """Counts the S3 operations this process's boto3 client makes (factory/storage.py's one client)."""

    def __init__(self):
        from factory import storage

        self.calls = []
        storage._s3_client().meta.events.register("before-call.s3.*", self.count)

    def count(self, model, **kwargs):
        self.calls.append(model.name)

    def during(self, action) -> list[str]:
        start = len(self.calls)
        action()
        return self.calls[start:]


def test_with_an_index_a_refresh_is_one_conditional_get_whatever_the_number_of_styles(s3_server):
    boto3.client("s3").create_bucket(Bucket="indexed")
    uri = "s3://indexed/registry"
    for index in range(12):
        publish_random_style(uri, f"style-{index:02d}", seed=index)
    view = RegistryView(uri, refresh_s=1, full_refresh_s=3600)
    assert len(view.styles) == 12
    calls = S3Calls()
    assert calls.during(view.refresh) == ["GetObject"]  # index.json, answered 304: it has not changed
    retrained = publish_random_style(uri, "style-03", seed=99)
    # index.json, then the new version's metadata: a read per new version, none per style.
    assert calls.during(view.refresh) == ["GetObject", "GetObject"]
    assert view.styles["style-03"].version == retrained and len(view.styles) == 12
    assert view.age_s() < 5


def test_a_registry_from_before_the_index_is_scanned_and_gets_one_at_its_next_publish(tmp_path):
    root = tmp_path / "registry"
    for index, name in enumerate(["old-a", "old-b"]):
        publish_random_style(root, name, seed=index)
    (root / registry.INDEX_FILE).unlink()  # as every registry was before the index existed
    view = RegistryView(str(root), refresh_s=1)
    assert sorted(view.styles) == ["old-a", "old-b"]
    publish_random_style(root, "new-c", seed=3)
    assert sorted(registry.read_index_styles(str(root))) == ["new-c", "old-a", "old-b"]  # built from every pointer
    view.refresh()
    assert sorted(view.styles) == ["new-c", "old-a", "old-b"]


def test_an_update_lost_between_two_publishers_is_repaired_by_the_full_scan_and_never_takes_a_style_back(tmp_path):
    root = str(tmp_path / "registry")
    publish_random_style(root, "alpha", seed=0)
    clock = [0.0]
    view = RegistryView(root, refresh_s=1, full_refresh_s=60, clock=lambda: clock[0])  # a full scan: alpha
    stale_index = registry.read_index_styles(root)
    publish_random_style(root, "beta", seed=1)
    newer_alpha = publish_random_style(root, "alpha", seed=2)
    clock[0] = 10.0
    view.refresh()
    assert view.styles["alpha"].version == newer_alpha and "beta" in view.styles
    registry.write_index(root, stale_index)  # another process's publish, from an index read before both
    clock[0] = 20.0
    view.refresh()
    assert view.styles["alpha"].version == newer_alpha and "beta" in view.styles  # a stale index takes nothing back
    gamma = publish_random_style(root, "gamma", seed=3)
    registry.write_index(root, stale_index)  # gamma's own index update lost too
    clock[0] = 30.0
    view.refresh()
    assert "gamma" not in view.styles  # the index alone does not know it...
    clock[0] = 80.0
    view.refresh()
    assert view.styles["gamma"].version == gamma  # ...until the next full scan


def test_a_withdrawn_style_leaves_the_listing_at_the_next_refresh(tmp_path):
    root = str(tmp_path / "registry")
    for index, name in enumerate(["keep", "drop"]):
        publish_random_style(root, name, seed=index)
    view = RegistryView(root, refresh_s=1, full_refresh_s=3600)
    registry.withdraw(root, "drop")
    view.refresh()
    assert sorted(view.styles) == ["keep"] and registry.list_styles(root) == ["keep"]


def test_a_registry_folder_that_is_not_there_is_an_outage_not_an_empty_registry(tmp_path):
    """The folder moved away (an unmounted volume, a wrong path): every warm style stays served, its age
    grows, and once the folder is back a style published meanwhile is listed at the next refresh."""
    root = tmp_path / "registry"
    for index, name in enumerate(["alpha", "beta", "gamma"]):
        publish_random_style(root, name, seed=index)
    clock = [0.0]
    heard = []
    view = RegistryView(str(root), refresh_s=1, clock=lambda: clock[0], on_refresh=heard.append)
    root.rename(tmp_path / "elsewhere")
    for now in (10.0, 80.0):
        clock[0] = now
        with pytest.raises(RegistryUnreadable, match="not there"):
            view.refresh()
        assert sorted(view.styles) == ["alpha", "beta", "gamma"] and view.age_s() == now
    (tmp_path / "elsewhere").rename(root)
    publish_random_style(root, "delta", seed=3)
    clock[0] = 81.0
    view.refresh()
    assert sorted(view.styles) == ["alpha", "beta", "delta", "gamma"] and view.age_s() == 0


def test_a_listing_that_loses_most_styles_at_once_is_held_back_until_storage_says_so_for_the_hold(tmp_path):
    root = str(tmp_path / "registry")
    for index, name in enumerate(["alpha", "beta", "gamma", "delta"]):
        publish_random_style(root, name, seed=index)
    clock, heard = [0.0], []
    view = RegistryView(root, refresh_s=1, full_refresh_s=0, mass_removal_hold_s=600, clock=lambda: clock[0], on_refresh=heard.append)
    for name in ("beta", "gamma", "delta"):  # three of four gone from storage, not withdrawn: a wrong prefix looks like this
        shutil.rmtree(Path(root) / name)
    publish_random_style(root, "epsilon", seed=5)
    view.refresh()
    assert sorted(view.styles) == ["alpha", "beta", "delta", "epsilon", "gamma"] and heard == ["held"]  # new ones go live
    clock[0] = 599.0
    view.refresh()
    assert "beta" in view.styles
    clock[0] = 600.0
    view.refresh()
    assert sorted(view.styles) == ["alpha", "epsilon"]


def test_withdrawing_most_styles_at_once_is_not_held(tmp_path):
    """registry.withdraw deletes the pointer and leaves the versions: on purpose, so applied at once."""
    root = str(tmp_path / "registry")
    for index, name in enumerate(["alpha", "beta", "gamma", "delta"]):
        publish_random_style(root, name, seed=index)
    heard = []
    view = RegistryView(root, refresh_s=1, full_refresh_s=3600, on_refresh=heard.append)
    for name in ("beta", "gamma", "delta"):
        registry.withdraw(root, name)
    view.refresh()
    assert sorted(view.styles) == ["alpha"] and heard == []


def test_withdrawing_one_style_of_a_few_is_not_held(tmp_path):
    root = str(tmp_path / "registry")
    for index, name in enumerate(["alpha", "beta"]):
        publish_random_style(root, name, seed=index)
    heard = []
    view = RegistryView(root, refresh_s=1, full_refresh_s=3600, on_refresh=heard.append)
    registry.withdraw(root, "beta")
    view.refresh()
    assert sorted(view.styles) == ["alpha"] and heard == []


def test_a_view_that_starts_while_storage_is_down_serves_the_last_listing_another_view_kept(tmp_path):
    root = tmp_path / "registry"
    versions = {name: publish_random_style(root, name, seed=index) for index, name in enumerate(["alpha", "beta"])}
    copy = ListingCopy()
    RegistryView(str(root), refresh_s=1, copy=copy)  # the replica that ran before
    root.rename(tmp_path / "elsewhere")
    replacement = RegistryView(str(root), refresh_s=1, copy=copy)  # starts during the outage: no exception
    assert {name: style.version for name, style in replacement.styles.items()} == versions
    assert replacement.styles["alpha"].metadata["steps"] == 0 and replacement.age_s() == float("inf")
    assert RegistryView(str(root), refresh_s=1).styles == {}  # no copy: empty, but started all the same


def test_a_failing_refresh_is_not_stuck_but_a_dead_refreshing_thread_is(tmp_path):
    root = tmp_path / "registry"
    publish_random_style(root, "alpha", seed=0)
    view = RegistryView(str(root), refresh_s=0.05)
    view.refresh = lambda: (_ for _ in ()).throw(OSError("storage down"))
    view.start_refreshing()
    time.sleep(0.3)
    assert view.stuck_s() < 0.3 and sorted(view.styles) == ["alpha"]
    view.refresh = threading.Event().wait  # quiet from here on: the thread outlives the test
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    view._thread = dead  # as after an error the loop did not catch
    assert view.stuck_s() == float("inf")


def test_a_view_whose_first_read_hangs_starts_from_the_last_listing_within_its_bound(tmp_path):
    """Storage that hangs instead of failing (a black-holed connection) must not hold a replica's start."""
    root = tmp_path / "registry"
    versions = {"alpha": publish_random_style(root, "alpha", seed=0)}
    copy = ListingCopy()
    RegistryView(str(root), refresh_s=1, copy=copy)
    release = threading.Event()

    class HangingStorage(RegistryView):
        def refresh(self):
            release.wait(30)
            super().refresh()

    started = time.monotonic()
    view = HangingStorage(str(root), refresh_s=1, copy=copy, first_read_timeout_s=0.5)
    assert time.monotonic() - started < 5 and {name: style.version for name, style in view.styles.items()} == versions
    assert view.age_s() == float("inf")
    publish_random_style(root, "beta", seed=1)
    release.set()  # storage answers: the hanging read completes and the view is current
    view._first_read.join(30)
    assert sorted(view.styles) == ["alpha", "beta"] and view.age_s() < 5
