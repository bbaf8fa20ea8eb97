"""What the cloud path needs before and while a pack trains: one S3 layout for the download, the
configs and docs/aws.md; a bucket in any region; read errors that stop a pack instead of being
skipped; a limit on skipped files; retrains that really train; and bad input stopped before any
worker is asked for. docs/aws.md's AWS steps themselves are run by .ci/readme_aws_rehearsal.py."""

import re
import sys

import boto3
import pyarrow.fs
import pytest
import ray

from conftest import REPO_ROOT, write_dirty_image_folder
from factory import data, download, layout, storage, train_all
from factory.cluster_fit import use_gpu
from factory.content_stream import ContentSource, content_batches
from factory.packs import plan_packs
from factory.settings import ResolvedStyle, load_config
from factory_runs import write_config

STYLE = "styles=[{name: a, image: a.jpg}]"


def test_the_download_the_configs_and_the_readme_follow_one_layout():
    local = load_config(REPO_ROOT / "configs" / "coco.yaml")
    assert local.data.source == layout.under(layout.LOCAL_ROOT, layout.COCO_IMAGES)
    assert local.loss_network.weights == (layout.under(layout.LOCAL_ROOT, layout.VGG19_MAT),)
    cloud = load_config(REPO_ROOT / "configs" / "coco_s3.yaml")
    root = layout.EXAMPLE_BUCKET_ROOT
    assert cloud.data.source == layout.under(root, layout.COCO_SHARDS)  # the fast path, prepared in docs/aws.md's step 4
    assert cloud.loss_network.weights == (layout.under(root, layout.VGG19_MAT),)
    assert cloud.registry == layout.under(root, layout.REGISTRY)
    assert cloud.training.storage_path == layout.under(root, layout.CHECKPOINTS)
    assert all(style.image.startswith(layout.under(root, layout.STYLE_IMAGES) + "/") for style in cloud.styles)
    # What factory.download writes under --dest.
    assert (download.ITEMS["coco"].unpack_to, download.ITEMS["vgg19-mat"].filename) == (layout.COCO_IMAGES, layout.VGG19_MAT)
    # The AWS page's commands put the files there.
    readme = (REPO_ROOT / "docs" / "aws.md").read_text()
    assert "factory.download coco vgg19-mat --dest s3://$BUCKET " in readme
    assert (f"factory.prepare_shards --source s3://$BUCKET/{layout.COCO_IMAGES} --dest s3://$BUCKET/{layout.COCO_SHARDS} "
            f"--image-size {cloud.data.image_size}") in readme
    assert f"s3://$BUCKET/{layout.STYLE_IMAGES}/" in readme


def test_a_bucket_in_another_region_gets_a_filesystem_in_the_buckets_region(s3_server):
    # boto3 follows S3's redirect to a bucket's region; pyarrow signs for AWS_DEFAULT_REGION and gets 301.
    boto3.client("s3", region_name="eu-central-1").create_bucket(
        Bucket="far-away", CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})
    assert s3_server["AWS_DEFAULT_REGION"] != "eu-central-1"
    filesystem, path = storage.pyarrow_filesystem("s3://far-away/checkpoints")
    assert filesystem.region == "eu-central-1" and path == "far-away/checkpoints"
    with pytest.raises(FileNotFoundError, match="no bucket named 'no-such-bucket'"):
        storage.pyarrow_filesystem("s3://no-such-bucket/data")


class DenyingHandler(pyarrow.fs.FileSystemHandler):
    """A local filesystem whose files named in `denied` cannot be opened, as S3 answers AccessDenied."""

    def __init__(self, denied=()):
        self.local, self.denied = pyarrow.fs.LocalFileSystem(), set(denied)

    def get_type_name(self):
        return "denying"

    def open_input_file(self, path):
        if path.rsplit("/", 1)[-1] in self.denied:
            raise PermissionError(f"AccessDenied: Access Denied for {path}")
        return self.local.open_input_file(path)

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def __eq__(self, other):
        return isinstance(other, DenyingHandler) and other.denied == self.denied

    def __ne__(self, other):
        return not self == other

    for name in ("get_file_info_selector", "create_dir", "delete_dir", "delete_dir_contents", "delete_root_dir_contents",
                 "delete_file", "move", "copy_file", "open_input_stream", "open_output_stream", "open_append_stream", "normalize_path"):
        locals()[name] = lambda self, *args, _name=name: getattr(self.local, _name)(*args)


# Ray's workers cannot import this test module: its handler class travels by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def files_source(folder, filesystem, max_fraction):
    paths = sorted(str(path) for path in folder.rglob("*") if path.is_file())
    return ContentSource(tuple(paths), False, filesystem, 32, 10_000_000, data.SkipLedger.remote(len(paths), max_fraction))


def test_a_file_that_exists_but_cannot_be_read_stops_the_stream_naming_it(ray_local, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "READ_RETRY_BASE_S", 0.01)
    folder = tmp_path / "content"
    write_dirty_image_folder(folder, clean_count=8)
    filesystem = pyarrow.fs.PyFileSystem(DenyingHandler({"photo_001.jpg"}))
    stream = content_batches(files_source(folder, filesystem, 1.0), seed=0, rank=0, world_size=1, batch_size=2)
    with pytest.raises(Exception, match=r"could not read .*photo_001.jpg in 4 tries: AccessDenied"):
        for _ in range(20):
            next(stream)


def test_past_max_skipped_fraction_the_stream_stops_with_the_reasons_counted(ray_local, tmp_path):
    folder = tmp_path / "content"
    write_dirty_image_folder(folder)  # 4 unusable files of 18
    stream = content_batches(files_source(folder, pyarrow.fs.LocalFileSystem(), 0.01), seed=0, rank=0, world_size=1, batch_size=2)
    with pytest.raises(Exception, match=r"content files were unusable .* more than data.max_skipped_fraction \(1.0%\)"):
        for _ in range(20):
            next(stream)


def test_a_missing_file_is_skipped_and_counted_as_missing():
    assert data.read_with_retries(lambda: (_ for _ in ()).throw(FileNotFoundError("gone")), "x.jpg") is None


def test_auto_accelerator_on_a_cluster_without_gpus_is_refused(ray_local, monkeypatch):
    config = load_config(None, [STYLE])  # accelerator: auto
    assert use_gpu(config) is False  # one machine of CPUs: its CPUs
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # inside ray job submit, or pointed at a cluster
    with pytest.raises(ValueError, match="training.accelerator is auto and the Ray cluster has no GPU now.*accelerator: gpu"):
        use_gpu(config)
    assert use_gpu(load_config(None, [STYLE, "training.accelerator=gpu"])) is True


def resolved(name: str) -> ResolvedStyle:
    return ResolvedStyle(name=name, image_bytes=b"", image_sha256="-", content_weight=1.0, style_weight=1.0, tv_weight=1.0,
                         steps=10, learning_rate=1e-3)


def test_a_retrain_is_a_new_run_while_an_interrupted_one_keeps_its_name():
    config = load_config(None, [STYLE])
    styles, hashes = [resolved("a"), resolved("b")], {"a": "h1", "b": "h2"}
    first = plan_packs(config, styles, hashes)[0].run_name
    assert plan_packs(config, styles, hashes)[0].run_name == first  # a rerun after a crash resumes
    retrain = plan_packs(config, styles, hashes, replaces={"a": "v1"})[0].run_name
    assert retrain != first  # the finished run of v1 would only publish v1's weights again
    assert plan_packs(config, styles, hashes, replaces={"a": "v1"})[0].run_name == retrain
    assert plan_packs(config, styles, hashes, replaces={"a": "v2"})[0].run_name not in (first, retrain)
    # A new model is a new draw (the config's seed would give the same weights again), as stable as its name.
    seeds = [plan_packs(config, styles, hashes, replaces=replaces)[0].training.seed for replaces in ({}, {"a": "v1"}, {"a": "v1"})]
    assert seeds[0] == config.training.seed and seeds[1] != seeds[0] and seeds[2] == seeds[1]


def run_factory(tmp_path, capsys, *arguments, **config) -> tuple[int, str]:
    settings = {"source": str(REPO_ROOT / "data" / "samples" / "content"), "registry": str(tmp_path / "registry"),
                "storage_path": str(tmp_path / "checkpoints"), "steps": 2, **config}
    path = write_config(tmp_path / "config.yaml", **settings)
    code = train_all.main(["--config", str(path), *arguments])
    return code, capsys.readouterr().err


def test_a_styles_name_not_in_the_config_stops_the_run_naming_both(tmp_path, capsys):
    code, error = run_factory(tmp_path, capsys, "--styles", "starry_night,nope")
    assert code == 2 and "--styles names nope, not in the config; it has starry_night, the_scream" in error


def test_a_style_image_that_is_not_an_image_stops_the_run_naming_the_setting(tmp_path, capsys):
    bad = tmp_path / "painting.jpg"
    bad.write_text("not a painting")
    code, error = run_factory(tmp_path, capsys, styles=("starry_night",), style_images={"starry_night": str(bad)})
    assert code == 2 and "style 'starry_night': its image is unusable" in error and "styles[].image" in error


def test_outputs_that_cannot_be_written_stop_the_run_before_any_pack_starts(ray_local, tmp_path, capsys):
    (tmp_path / "a-file").write_text("a file, not a folder")
    code, error = run_factory(tmp_path, capsys, registry=str(tmp_path / "a-file" / "registry"))
    assert code == 2
    assert re.search(r"registry .*a-file/registry: cannot be written from the driver", error) and "no pack was started" in error
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_content_the_nodes_cannot_see_stops_the_run_naming_the_node(ray_local, tmp_path, capsys):
    empty = tmp_path / "empty-but-listed"
    empty.mkdir()
    from factory import preflight

    config = load_config(None, [STYLE, f"data.source={empty}", f"registry={tmp_path / 'registry'}",
                                f"training.storage_path={tmp_path / 'checkpoints'}"])
    with pytest.raises(ValueError, match=r"data.source on node [\d.]+: nothing at .*empty-but-listed as seen from this node"):
        preflight.check(config)
    assert ray.is_initialized()
