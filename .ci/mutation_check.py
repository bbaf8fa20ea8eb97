"""Breaks the core guarantees on purpose, one at a time, in a copy of the project, and checks that the
fast tests notice each one. A guarantee whose break passes every test is a guarantee nobody holds.

    .venv/bin/python .ci/mutation_check.py            # CI runs it after the tests; a few minutes
    .venv/bin/python .ci/mutation_check.py --list     # the breaks, and the tests each must fail

Each break is a text replacement that must match exactly once (a stale entry fails the check too).
The list is the reviewed core; mutmut (`pip install mutmut`, then `mutmut run --paths-to-mutate
factory/`) finds more candidates from time to time, and the ones that survive the fast tests and
matter belong here with the test that now kills them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Queue

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 2  # copies of the project tried side by side


@dataclass(frozen=True)
class Break:
    guarantee: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids or files that must fail


BREAKS = [
    Break("resume restores the networks' weights", "factory/checkpoint_state.py",
          "        net.load_state_dict(state[\"nets\"][name])\n", "        pass\n",
          ("tests/test_training_step.py::test_a_resumed_run_continues_exactly_as_the_uninterrupted_one",)),
    Break("resume restores Adam's state", "factory/checkpoint_state.py",
          "    optimizer.load_state_dict(state[\"optimizer\"])\n", "",
          ("tests/test_training_step.py::test_a_resumed_run_continues_exactly_as_the_uninterrupted_one",)),
    Break("resume restores the random stream", "factory/checkpoint_state.py",
          "        _restore_random_state(state[\"random\"])\n", "        pass\n",
          ("tests/test_training_step.py::test_a_resumed_run_continues_exactly_as_the_uninterrupted_one",)),
    Break("resume restores the fp16 loss scale", "factory/checkpoint_state.py",
          "        runner.load_scaler_state(state.get(\"scaler\") or {})\n", "",
          ("tests/test_training_step.py::test_an_fp16_run_checkpoints_its_loss_scale_and_resumes_it",)),
    Break("a checkpoint keeps the fp16 loss scale", "factory/checkpoint_state.py",
          "        \"scaler\": scaler.state_dict(),\n", "        \"scaler\": {},\n",
          ("tests/test_training_step.py::test_an_fp16_run_checkpoints_its_loss_scale_and_resumes_it",)),
    Break("the training graphs are compiled for the training shape only (static)", "factory/style_pack.py",
          "self.pack = torch.compile(self.pack, backend=backend, dynamic=False)", "self.pack = torch.compile(self.pack, backend=backend, dynamic=True)",
          ("tests/test_training_step.py::test_the_compiled_step_sees_only_the_training_shape_three_static_graphs",)),
    Break("the output layer runs in fp32 under autocast", "factory/transform_net.py",
          "        if not torch.is_autocast_enabled(device_type):\n", "        if True:\n",
          ("tests/test_training_step.py::test_under_bf16_autocast_the_output_and_the_losses_it_feeds_stay_fp32_precise",)),
    Break("a non-finite loss stops the pack", "factory/style_pack.py",
          "        newly_bad = ~torch.isfinite(totals) & (self.first_bad_step < 0)", "        newly_bad = torch.zeros_like(totals, dtype=torch.bool)",
          ("tests/test_training_step.py::test_a_loss_that_stops_being_finite_is_named_with_its_style_and_step",)),
    Break("a retrain is a new run, not the finished one", "factory/packs.py",
          "recipe_hashes[style.name] + replaces.get(style.name, \"\")", "recipe_hashes[style.name]",
          ("tests/test_cloud_path.py::test_a_retrain_is_a_new_run_while_an_interrupted_one_keeps_its_name",)),
    Break("a model's files are written before its metadata and pointers", "factory/registry.py",
          "    storage.write_bytes(version_uri(registry, style, version, MODEL_FILE), model_bytes)\n", "",
          ("tests/test_registry.py::test_a_version_is_written_file_by_file_and_only_then_pointed_at",)),
    Break("a file is written under a temporary name and renamed", "factory/storage.py",
          "    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f\".{path.name}.\", delete=False) as handle:",
          "    with open(path, \"wb\") as handle:",
          ("tests/test_registry.py::test_a_file_being_written_is_never_seen_half_written_under_its_name",)),
    Break("a resumed download checks the range it was given", "factory/download.py",
          "                _check_resumes_at(url, partial, have, response.headers.get(\"Content-Range\", \"\"))\n",
          "                pass\n", ("tests/test_download.py",)),
    Break("a download matching no published release is set aside", "factory/download.py",
          "        if md5 not in md5_releases:", "        if False:", ("tests/test_download.py",)),
    Break("content read errors other than a missing file stop the pack", "factory/data.py",
          "        except FileNotFoundError:\n            return None\n        except OSError as error:",
          "        except OSError as error:\n            return None\n        except FileNotFoundError as error:",
          ("tests/test_cloud_path.py::test_a_file_that_exists_but_cannot_be_read_stops_the_stream_naming_it",)),
    Break("skipped files past the limit stop the pack", "factory/data.py",
          "        if not self.listed or len(self.reasons) <= self.max_fraction * self.listed:", "        if True:",
          ("tests/test_cloud_path.py::test_past_max_skipped_fraction_the_stream_stops_with_the_reasons_counted",)),
    Break("pyarrow is given the bucket's own region", "factory/storage.py",
          "        region = bucket_region(bucket) or os.environ.get(\"AWS_DEFAULT_REGION\")",
          "        region = os.environ.get(\"AWS_DEFAULT_REGION\")",
          ("tests/test_cloud_path.py::test_a_bucket_in_another_region_gets_a_filesystem_in_the_buckets_region",)),
    Break("an over-limit canvas is refused before decoding", "factory/images.py",
          "    if width * height > max_pixels:\n        raise", "    if False:\n        raise",
          ("tests/test_images.py", "tests/test_http_input.py")),
    Break("a streamed body over the limit is refused as it arrives", "serve/http_input.py",
          "        if size > max_bytes:\n            raise HTTPError(413", "        if False:\n            raise HTTPError(413",
          ("tests/test_http_input.py",)),
    Break("a JPEG decodes at the size a request needs", "factory/images.py",
          "        if scale >= 2:  # draft picks", "        if False:  # draft picks",
          ("tests/test_images.py::test_a_phone_photo_decodes_at_the_size_the_request_needs_not_in_full",)),
    Break("the colour shift counts the colours' covariance", "factory/quality.py",
          "    squared = float(np.sum((mean_a - mean_b) ** 2) + max(trace, 0.0))", "    squared = float(np.sum((mean_a - mean_b) ** 2))",
          ("tests/test_quality.py::test_colour_distance_is_the_frechet_distance_of_mean_and_covariance",)),
    Break("a flat photo's TV is guarded", "factory/losses.py",
          "_per_image_total_variation(photos).clamp_min(FLAT_PHOTO_TV)", "_per_image_total_variation(photos).clamp_min(1e-12)",
          ("tests/test_losses.py",)),
    Break("a bucketed answer is resized back to its request's size", "serve/style_model.py",
          "        return [self._finite(resize(stylised[i:i + 1], *tensor.shape[-2:])[0].clamp(0, 255).cpu()) for i, tensor in enumerate(group)]",
          "        return [self._finite(stylised[i].clamp(0, 255).cpu()) for i, tensor in enumerate(group)]",
          ("tests/test_static_shapes.py::test_a_bucketed_request_comes_back_at_its_own_size",)),
    Break("a failed model load evicts nothing", "serve/model_cache.py",
          "        if model_id not in self.loading:\n", "        if self.models:\n            self.models.popitem(last=False)\n        if model_id not in self.loading:\n",
          ("tests/test_model_cache.py",)),
    Break("a failed batch is retried after its memory is freed", "serve/style_model.py",
          "                results = self._attempt(lambda: self._run_group(run_shape, [tensors[i] for i in indices], self._styles(styles, indices)))\n",
          "                try:\n                    results = self._run_group(run_shape, [tensors[i] for i in indices], self._styles(styles, indices))\n"
          "                except Exception:\n                    results = [self._run_alone(tensors[i], self._styles(styles, [i])) for i in indices]\n",
          ("tests/test_serve_config.py::test_after_running_out_of_memory_the_failed_batch_is_freed_before_the_images_are_retried_alone",)),
    Break("a non-finite picture is a failure, not an answer", "serve/style_model.py",
          "        if torch.isfinite(output).all():", "        if True:",
          ("tests/test_serve_config.py::test_a_model_whose_output_is_not_finite_fails_its_request_instead_of_answering_black",)),
    Break("a refresh with an index is one GET", "serve/registry_view.py",
          "        pointers = None if self.clock() - self.last_full_scan >= self.full_refresh_s else self._pointers_from_index()",
          "        pointers = None",
          ("tests/test_registry_view.py::test_with_an_index_a_refresh_is_one_conditional_get_whatever_the_number_of_styles",)),
    Break("the head may resolve the GPU nodes' AMI", "aws/prepare_account.py",
          "    {\"Effect\": \"Allow\", \"Action\": \"ssm:GetParameters\",", "    {\"Effect\": \"Allow\", \"Action\": \"ssm:GetParameter\",",
          ("tests/test_aws_policies.py",)),
    Break("the autoscaler may launch instances", "aws/prepare_account.py",
          "\"ec2:Describe*\", \"ec2:RunInstances\",", "\"ec2:Describe*\",", ("tests/test_aws_policies.py",)),
    Break("workers may read the bucket's objects", "aws/prepare_account.py",
          "        {\"Effect\": \"Allow\", \"Action\": [\"s3:GetObject\", \"s3:PutObject\", \"s3:DeleteObject\"],",
          "        {\"Effect\": \"Allow\", \"Action\": [\"s3:PutObject\", \"s3:DeleteObject\"],", ("tests/test_aws_policies.py",)),
    Break("the training job's head runs no training", "k8s/rayjob-train.yaml",
          "        num-cpus: \"0\"", "        num-cpus: \"4\"", ("tests/test_k8s.py",)),
    Break("the pods' service account carries the S3 role", "k8s/service-account.yaml",
          "    eks.amazonaws.com/role-arn:", "    example.com/role-arn:", ("tests/test_k8s.py",)),
    Break("a version loads at the width its metadata records", "factory/transform_net.py",
          'width=architecture.get("width", 1.0),', "width=1.0,",
          ("tests/test_model_width.py::test_a_narrow_version_loads_at_its_width_in_torch_and_in_onnx_runtime",)),
    Break("full-width recipes hash as they did before widths existed", "factory/packs.py",
          '        del style_fields["width"]\n', "        pass\n",
          ("tests/test_model_width.py::test_a_width_is_part_of_the_recipe_but_full_width_recipes_hash_as_before_widths_existed",)),
    Break("a family's checkpoint resumes its network and style vectors", "factory/checkpoint_state.py",
          '        pack.load_state_dict(state["family"])\n', "        pass\n",
          ("tests/test_family.py::test_a_familys_checkpoint_resumes_the_network_vectors_and_adam",)),
    Break("every worker of a family draws the same styles for an image", "factory/family.py",
          "manual_seed(seed * 1_000_003 + turn)", "manual_seed(seed * 1_000_003 + turn + first_image)",
          ("tests/test_family.py::test_every_style_gets_an_equal_share_of_each_pass_drawn_alike_on_every_worker_and_after_a_resume",)),
    Break("every style gets one image of each pass over the styles", "factory/family.py",
          "        turn, place = divmod(image, family_size)\n", "        turn, place = image, image % family_size\n",
          ("tests/test_family.py::test_every_style_gets_an_equal_share_of_each_pass_drawn_alike_on_every_worker_and_after_a_resume",)),
    Break("styles a step did not draw keep their vectors", "factory/family.py",
          "self.style_vectors.copy_(torch.where(drawn, self.style_vectors, vectors))", "self.style_vectors.copy_(self.style_vectors)",
          ("tests/test_family.py::test_styles_a_step_did_not_draw_stay_where_they_were_over_many_steps",)),
    Break("a family's output conv has its conditional norm", "factory/transform_net.py",
          "self.output_norm = ConditionalInstanceNorm2d(3) if output_norm else None", "self.output_norm = None",
          ("tests/test_family.py::test_the_output_norm_gives_each_style_its_own_output_colour_balance",)),
    Break("a preview or evaluation photo under data.source is refused", "factory/held_out.py",
          "        if inside(uri, config.data.source):\n", "        if False:\n",
          ("tests/test_held_out.py::test_a_photo_under_data_source_is_refused_before_training",)),
    Break("a family step trains only the drawn styles' vectors", "factory/family.py",
          "self.style_vectors.index_select(0, image_styles)", "self.style_vectors.index_select(0, image_styles * 0)",
          ("tests/test_family.py::test_a_family_step_trains_the_shared_network_and_only_the_drawn_styles_vectors",)),
    Break("one batch of a family's model runs each image with its own style vector", "serve/style_model.py",
          "return None if styles is None else torch.stack([styles[i] for i in indices])", "return None if styles is None else torch.stack([styles[indices[0]] for i in indices])",
          ("tests/test_family_serving.py::test_one_batch_carries_a_different_style_or_blend_per_image",)),
    Break("a family's styles share one model id (one load, shared batches)", "serve/registry_view.py",
          "        if self.family is not None:\n", "        if False:\n",
          ("tests/test_family_serving.py::test_a_familys_styles_share_one_model_id_and_a_separate_style_keeps_its_own",)),
    Break("a vector of another family version is never mixed in", "serve/style_vectors.py",
          "!= [self.family[key] for key", "== [None for key",
          ("tests/test_family_serving.py::test_a_style_of_another_family_version_is_never_mixed_in",)),
    Break("blend weights must be finite numbers", "serve/http_input.py",
          "if not math.isfinite(weight) or abs(weight) > MAX_BLEND_WEIGHT:", "if abs(weight) > MAX_BLEND_WEIGHT:",
          ("tests/test_family_serving.py::test_a_bad_blend_is_a_400_that_says_what_to_send",)),
    Break("an over-limit canvas is refused before decoding starts, not decoded and then refused", "factory/images.py",
          "    width, height = image.size\n    # Checked before decoding", "    image.load()\n    width, height = image.size\n    # Checked before decoding",
          ("tests/test_images.py::test_an_over_limit_canvas_is_refused_without_decoding_starting",)),
    Break("Serve's routing header is refused in the proxy's every spelling", "serve/http_input.py",
          "if header.lower().replace(\"-\", \"_\") in ROUTING_HEADERS:", "if header.lower() in ROUTING_HEADERS:",
          ("tests/test_http_input.py::test_serves_routing_header_is_refused_in_any_spelling_the_proxy_reads",)),
    Break("the front door routes with the forgetful router", "serve/front_app.py",
          "@serve.deployment(name=\"Front\", request_router_config=RequestRouterConfig(request_router_class=ForgetfulRouter))",
          "@serve.deployment(name=\"Front\")",
          ("tests/test_routing.py::test_every_deployment_the_proxies_or_the_front_call_routes_with_the_forgetful_router",)),
    Break("the pool routes with the forgetful router", "serve/style_pool.py",
          "@serve.deployment(name=\"StylePool\", request_router_config=RequestRouterConfig(request_router_class=ForgetfulRouter))",
          "@serve.deployment(name=\"StylePool\")",
          ("tests/test_routing.py::test_every_deployment_the_proxies_or_the_front_call_routes_with_the_forgetful_router",)),
    Break("a dedicated style routes with the forgetful router", "serve/style_app.py",
          "@serve.deployment(name=\"StyleEndpoint\", request_router_config=RequestRouterConfig(request_router_class=ForgetfulRouter))",
          "@serve.deployment(name=\"StyleEndpoint\")",
          ("tests/test_routing.py::test_every_deployment_the_proxies_or_the_front_call_routes_with_the_forgetful_router",)),
    Break("the router forgets a request by identity, not by comparing its arguments", "serve/routing.py",
          "            if waiting_request is pending_request:", "            if waiting_request == pending_request:",
          ("tests/test_routing.py::test_a_routed_request_leaves_the_model_id_index_whatever_its_arguments",)),
    Break("a registry folder that is not there is an outage, not an empty registry", "serve/registry_view.py",
          "            if not storage.is_s3(self.registry_uri) and not Path(self.registry_uri).is_dir():", "            if False:",
          ("tests/test_registry_view.py::test_a_registry_folder_that_is_not_there_is_an_outage_not_an_empty_registry",)),
    Break("a listing that loses most styles at once is held back", "serve/registry_view.py",
          "        if len(vanished) < 2 or len(vanished) * 2 <= len(self.styles):", "        if True:",
          ("tests/test_registry_view.py::test_a_listing_that_loses_most_styles_at_once_is_held_back_until_storage_says_so_for_the_hold",)),
    Break("a view that starts while storage is down begins from the last listing kept", "serve/registry_view.py",
          "            self.styles = self._from_copy()", "            self.styles = {}",
          ("tests/test_registry_view.py::test_a_view_that_starts_while_storage_is_down_serves_the_last_listing_another_view_kept",)),
    Break("a model found unusable is refused for the failure TTL", "serve/model_cache.py",
          "            self._remember_failure(model_id, reason, BROKEN)\n", "",
          ("tests/test_model_cache.py::test_a_loaded_model_found_unusable_is_dropped_and_refused_for_the_ttl_while_the_others_stay",)),
    Break("model loads are bounded, on threads of their own", "serve/model_cache.py",
          "ThreadPoolExecutor(max_workers=max_concurrent_loads, ", "ThreadPoolExecutor(max_workers=64, ",
          ("tests/test_model_cache.py::test_cold_loads_of_different_models_run_side_by_side_within_their_bound_and_one_models_waiters_share_its_load",)),
    Break("the request metric names only the most requested styles", "serve/metrics.py",
          "        return style if style in self.named else OTHER_STYLES", "        return style",
          ("tests/test_serve_config.py::test_the_request_metric_names_only_the_most_requested_styles",)),
    Break("a rollback updates the index that servers read", "factory/registry.py",
          "    storage.write_bytes(storage.join(registry, style, POINTER_FILE), json.dumps(pointer).encode())\n    _add_to_index(registry, style, pointer)\n    return pointer",
          "    storage.write_bytes(storage.join(registry, style, POINTER_FILE), json.dumps(pointer).encode())\n    return pointer",
          ("tests/test_registry_cli.py::test_rollback_is_a_pointer_switch_that_a_serving_view_follows_and_can_be_undone",)),
    Break("prune never deletes a style's current version", "factory/registry_cli.py",
          "        kept = set(versions[-keep:]) | ({current} if current else set())", "        kept = set(versions[-keep:])",
          ("tests/test_registry_cli.py::test_prune_keeps_the_newest_the_current_and_every_family_version_a_kept_style_points_at",)),
    Break("prune never deletes a family version a kept style points at", "factory/registry_cli.py",
          "            if version == current or (family, version) in family_versions_in_use:", "            if version == current:",
          ("tests/test_registry_cli.py::test_prune_keeps_the_newest_the_current_and_every_family_version_a_kept_style_points_at",)),
    Break("versions are ordered by their publishing time, not their names", "factory/registry_cli.py",
          "    return sorted(registry.list_versions(root, style), key=lambda version: _published_at(\n        lambda: registry.read_metadata(root, style, version), version))",
          "    return registry.list_versions(root, style)",
          ("tests/test_registry_cli.py::test_rollback_is_a_pointer_switch_that_a_serving_view_follows_and_can_be_undone",)),
    Break("an order needs a token we issued", "serve/order_tokens.py",
          "            matched |= hmac.compare_digest(given.encode(), token.encode())\n", "            matched = True\n",
          ("tests/test_order_desk.py::test_tokens_come_from_the_environment_and_a_file_read_again_when_it_changes",)),
    Break("a token sees only its own orders", "serve/order_desk.py",
          "            if order is None or order.owner != owner:  # another token's order is as good as absent\n",
          "            if order is None:\n",
          ("tests/test_order_desk.py::test_a_token_sees_and_cancels_only_its_own_orders",)),
    Break("each token's orders in a day are bounded", "serve/order_desk.py",
          "            if len(today) >= settings.per_token_per_day:\n", "            if False:\n",
          ("tests/test_order_desk.py::test_each_token_has_its_own_limits_and_the_queue_its_bound",)),
    Break("the order queue is bounded", "serve/order_desk.py",
          "            if len(queued) >= settings.max_queued:\n", "            if False:\n",
          ("tests/test_order_desk.py::test_each_token_has_its_own_limits_and_the_queue_its_bound",)),
    Break("a cancelled order's run is stopped", "serve/order_desk.py",
          "                self.jobs.stop(job)\n            except Exception as error:  # the next round",
          "                pass\n            except Exception as error:  # the next round",
          ("tests/test_order_desk.py::test_cancelling_a_training_order_stops_its_run_and_its_partners_go_back_to_the_queue",)),
    Break("a failed run is tried again only max_attempts times", "serve/order_desk.py",
          "                elif state == \"FAILED\" and order.attempts < self.settings.max_attempts:\n",
          "                elif state == \"FAILED\":\n",
          ("tests/test_order_desk.py::test_a_failed_run_is_tried_again_then_fails_with_its_error_and_a_lost_one_is_queued_again",)),
    Break("a bulk job run again skips what is written", "factory/bulk_stylize.py",
          "        missing = [style for style in settings.styles if name not in written[style]]\n",
          "        missing = list(settings.styles)\n",
          ("tests/test_bulk_stylize.py::test_the_plan_leaves_out_outputs_already_written_and_hidden_files",)),
    Break("a clip's sound is copied", "factory/video.py",
          "                    held.append(packet) if encoder is None else output.mux(packet)\n", "                    pass\n",
          ("tests/test_video.py::test_a_clip_is_stylised_frame_by_frame_at_its_rate_with_its_sound_copied",)),
    Break("a truncated clip is refused", "factory/video.py",
          "    if declared_end and last_pts is not None", "    if False and declared_end and last_pts is not None",
          ("tests/test_video.py::test_a_bad_clip_is_refused_saying_why_and_leaves_no_output",)),
    Break("a clip in a bulk job's folder is stylised as a clip", "factory/bulk_stylize.py",
          "            (videos if clip else todo).append(", "            todo.append(",
          ("tests/test_bulk_stylize.py::test_the_plan_leaves_out_outputs_already_written_and_hidden_files",)),
    Break("the stability loss trains on noisy photos", "factory/style_pack.py",
          "        return content + torch.randn_like(content) * self.settings.stability_noise\n", "        return content.clone()\n",
          ("tests/test_stability.py::test_training_with_the_stability_loss_alone_makes_the_network_steadier_under_noise",)),
    Break("a recipe without the stability loss hashes as before it existed", "factory/packs.py",
          "    if not style.stability_weight:", "    if False:",
          ("tests/test_stability.py::test_the_stability_loss_is_in_the_recipe_when_on_and_absent_when_off",)),
    Break("an int8 copy is published only where its figures stay within tolerance", "factory/publishing.py",
          "    within = max(change.values()) <= onnx_int8.INT8_TOLERANCE\n", "    within = True\n",
          ("tests/test_int8.py::test_a_copy_that_keeps_the_figures_is_published_and_one_that_does_not_is_left_out",)),
]


def project_copy(destination: Path) -> None:
    """The tracked files of the project (what a clone has), plus the untracked ones git would not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def run_tests(copy: Path, tests: tuple[str, ...]) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(copy)}  # the copy's code, not the editable install's
    done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests],
                          cwd=copy, env=env, capture_output=True, text=True, timeout=900)
    return done.returncode, done.stdout[-1500:] + done.stderr[-500:]


def try_break(copy: Path, item: Break) -> str | None:
    """None when the break's tests fail (killed); else what went wrong."""
    path = copy / item.path
    original = path.read_text()
    if original.count(item.old) != 1:
        return (f"{item.guarantee}: the break no longer applies to {item.path} (found {original.count(item.old)} times); "
                "update .ci/mutation_check.py")
    path.write_text(original.replace(item.old, item.new))
    try:
        code, output = run_tests(copy, item.tests)
    finally:
        path.write_text(original)
    verdict = "killed" if code == 1 else "SURVIVED" if code == 0 else f"error (pytest exit {code})"
    print(f"{verdict:>10}  {item.guarantee}", flush=True)
    return None if code == 1 else f"{item.guarantee}: {verdict}\n{output}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="print the breaks and their tests, run nothing")
    args = parser.parse_args()
    if args.list:
        for item in BREAKS:
            print(f"- {item.guarantee} ({item.path}): {', '.join(item.tests)}")
        return 0
    survivors, started = [], time.time()
    with tempfile.TemporaryDirectory(prefix="mutation-") as temp:
        # One copy per core, each taking breaks in turn: a break's tests take seconds to a minute.
        copies = [Path(temp) / f"project-{index}" for index in range(max(1, min(WORKERS, os.cpu_count() or 1)))]
        for copy in copies:
            copy.mkdir()
            project_copy(copy)
        free: Queue = Queue()
        for copy in copies:
            free.put(copy)

        def attempt(item: Break) -> str | None:
            copy = free.get()
            try:
                return try_break(copy, item)
            finally:
                free.put(copy)

        with ThreadPoolExecutor(max_workers=len(copies)) as workers:
            survivors += [problem for problem in workers.map(attempt, BREAKS) if problem]
        # The named tests only (whole files where an entry names a file): the suite ran on this tree already.
        code, output = run_tests(copies[0], tuple(sorted({test for item in BREAKS for test in item.tests})))
        if code != 0:  # the unbroken copy must pass the same tests, or a "kill" proves nothing
            survivors.append(f"the unbroken copy fails these tests:\n{output}")
    print(f"{len(BREAKS)} breaks, {len(BREAKS) - len(survivors)} killed, in {time.time() - started:.0f} s")
    if survivors:
        print("\n".join(survivors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
