"""The style pool over real HTTP: many styles from one deployment, new versions live without a deploy.

The served fixture's pool keeps two models per replica, so these requests also exercise eviction.
"""

import concurrent.futures
import io
import shutil
import time

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from factory import images, registry
from serving import publish_random_family, publish_random_style, served  # noqa: F401 (a fixture)
from test_serve import photo_bytes

pytestmark = pytest.mark.slow
POOLED = [f"pooled-{index:02d}" for index in range(30)]
WIDTHS = (1.0, 0.5, 0.25)


def listed(base: str) -> set[str]:
    return {entry["name"] for entry in requests.get(f"{base}/styles", timeout=30).json()}


def wait_for(condition, timeout_s: float, what: str) -> float:
    """Seconds until condition() held; fails the test after timeout_s."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"{what}: not within {timeout_s} s")
        time.sleep(0.2)
    return time.monotonic() - start


def expected_png(registry_root, style: str, data: bytes) -> np.ndarray:
    net, _ = registry.load_model(str(registry_root), style)
    with torch.inference_mode():
        return np.asarray(images.to_image(net(images.to_tensor(Image.open(io.BytesIO(data)).convert("RGB")).unsqueeze(0))[0]), int)


def stylised_png(base: str, style: str, data: bytes) -> tuple[np.ndarray, requests.Response]:
    response = requests.post(f"{base}/styles/{style}?format=png", data=data, timeout=120)
    assert response.status_code == 200, (style, response.text)
    return np.asarray(Image.open(io.BytesIO(response.content)), int), response


@pytest.fixture(scope="module")
def thirty_styles(served):
    """30 more styles published into the running registry (no deploy), every other one with its ONNX
    export (run by ONNX Runtime) and the rest without (run by torch, as older versions are), at the
    three network widths in turn; removed again afterwards."""
    root = served["root"] / "registry"
    for index, name in enumerate(POOLED):
        publish_random_style(root, name, seed=100 + index, with_onnx=index % 2 == 0, width=WIDTHS[index % 3])
    wait_for(lambda: set(POOLED) <= listed(served["base"]), 30, "the published styles listed")
    yield POOLED
    for name in POOLED:
        registry.withdraw(str(root), name)
    wait_for(lambda: not set(POOLED) & listed(served["base"]), 30, "the removed styles gone from the listing")


def test_thirty_pooled_styles_each_answer_with_their_own_model(served, thirty_styles):
    data = photo_bytes((40, 32), "PNG", seed=3)
    outputs = {}
    for name in thirty_styles:  # a cache of two: nearly every request loads its model and evicts another
        answer, response = stylised_png(served["base"], name, data)
        assert response.headers["x-style"] == name
        # Each at its own width: a network loaded at another would fail to load or differ by far more.
        assert np.abs(answer - expected_png(served["root"] / "registry", name, data)).max() <= 1, name
        outputs[name] = answer
    widths = {requests.get(f"{served['base']}/styles/{name}", timeout=30).json()["architecture"]["width"] for name in thirty_styles[:3]}
    assert widths == set(WIDTHS)
    first, second = outputs[thirty_styles[0]], outputs[thirty_styles[1]]
    assert np.abs(first - second).mean() > 5  # different models, different pictures: no style answers for another


def expected_blend_png(registry_root, blend: dict[str, float], data: bytes) -> np.ndarray:
    """The blend as the family's own network draws it, with the weighted sum of the styles' vectors."""
    root = str(registry_root)
    metadata = {name: registry.read_metadata(root, name) for name in blend}
    vector = sum(weight * registry.load_style_vector(root, metadata[name]) for name, weight in blend.items())
    first = next(iter(metadata.values()))
    net = registry.load_family_net(root, first["family"], first["architecture"])
    with torch.inference_mode():
        photo = images.to_tensor(Image.open(io.BytesIO(data)).convert("RGB")).unsqueeze(0)
        return np.asarray(images.to_image(net(photo, vector[None])[0]), int)


@pytest.fixture(scope="module")
def pool_family(served):
    """Two styles of one family published while serving, withdrawn after the module's tests."""
    base, root = served["base"], served["root"] / "registry"
    names = ("fam-one", "fam-two")
    publish_random_family(root, names, seed=11, family="pool-family")
    wait_for(lambda: set(names) <= listed(base), 30, "the family's styles listed")
    yield names
    for name in names:
        registry.withdraw(str(root), name)


def test_a_style_familys_styles_are_served_each_with_its_own_vector(served, pool_family):
    """Two styles of one family (one shared network, a vector each): each answers with its own look, as
    the registry's FamilyStyle and the family's ONNX export draw it, and requests for both at once (one
    model id, so they may share a batch) each get their own style."""
    base, root, names = served["base"], served["root"] / "registry", pool_family
    data = photo_bytes((40, 32), "PNG", seed=6)
    answers = {}
    for name in names:
        answers[name], response = stylised_png(base, name, data)
        assert np.abs(answers[name] - expected_png(root, name, data)).max() <= 1, name
        assert requests.get(f"{base}/styles/{name}", timeout=30).json()["family"]["name"] == "pool-family"
    assert np.abs(answers[names[0]] - answers[names[1]]).mean() > 2
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda name: (name, stylised_png(base, name, data)[0]), names * 3))
    for name, answer in together:
        assert np.abs(answer - answers[name]).max() <= 1, name


def test_a_blend_of_a_familys_styles_mixes_their_vectors_in_one_pass(served, pool_family):
    base, root, (one, two) = served["base"], served["root"] / "registry", pool_family
    data = photo_bytes((40, 32), "PNG", seed=7)
    response = requests.post(f"{base}/styles/{one}?format=png&blend={one}:0.7,{two}:0.3", data=data, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["X-Blend"] == f"{one}:0.7,{two}:0.3" and response.headers["X-Style"] == one
    blended = np.asarray(Image.open(io.BytesIO(response.content)), int)
    assert np.abs(blended - expected_blend_png(root, {one: 0.7, two: 0.3}, data)).max() <= 1
    for name in (one, two):  # a mix of the two, neither one alone
        assert np.abs(blended - stylised_png(base, name, data)[0]).mean() > 0.5, name


@pytest.mark.parametrize("path_style, blend, status, says", [
    ("fam-one", "fam-one:0.5,nowhere:0.5", 404, "unknown style 'nowhere'"),
    ("fam-one", "fam-one:nan,fam-two:0.5", 400, "finite number"),
    ("fam-one", "fam-one:0.5,alpha:0.5", 400, "not in family 'pool-family'"),
    ("alpha", "alpha:0.5,beta:0.5", 400, "has a network of its own"),
    ("slow", "slow:1", 400, "does not blend"),
])
def test_a_blend_across_families_or_of_unknown_styles_is_refused_with_the_reason(served, pool_family, path_style, blend, status, says):
    response = requests.post(f"{served['base']}/styles/{path_style}?blend={blend}", data=photo_bytes((40, 32), "PNG", seed=8), timeout=60)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]


def test_a_style_published_while_serving_answers_without_a_deploy(served):
    base, root = served["base"], served["root"] / "registry"
    assert requests.post(f"{base}/styles/fresh", data=photo_bytes(), timeout=60).status_code == 404
    publish_random_style(root, "fresh", seed=7)
    seconds = wait_for(lambda: requests.post(f"{base}/styles/fresh", data=photo_bytes(), timeout=60).status_code == 200,
                       15, "a newly published style answering")
    print(f"newly published style answered after {seconds:.1f} s")
    assert "fresh" in listed(base)
    data = photo_bytes((40, 32), "PNG", seed=4)
    answer, _ = stylised_png(base, "fresh", data)
    assert np.abs(answer - expected_png(root, "fresh", data)).max() <= 1


def test_retraining_a_pooled_style_switches_its_version_without_a_deploy(served):
    base, root = served["base"], served["root"] / "registry"
    data = photo_bytes((40, 32), "PNG", seed=5)
    _, before = stylised_png(base, "beta", data)
    new_version = publish_random_style(root, "beta", seed=77)
    wait_for(lambda: requests.post(f"{base}/styles/beta", data=data, timeout=60).headers.get("x-model-version") == new_version,
             15, "the retrained version served")
    answer, after = stylised_png(base, "beta", data)
    assert after.headers["x-model-version"] == new_version != before.headers["x-model-version"]
    assert np.abs(answer - expected_png(root, "beta", data)).max() <= 1
    metadata = requests.get(f"{base}/styles/beta", timeout=30).json()
    assert metadata["version"] == new_version and metadata["steps"] == 77


def test_a_version_without_its_pointer_is_never_served(served, tmp_path):
    """A style whose current.json is not written yet (its publisher is still writing) is not a style yet."""
    base, root = served["base"], served["root"] / "registry"
    publish_random_style(tmp_path, "halfway", seed=8)
    shutil.copytree(tmp_path / "halfway" / "versions", root / "halfway" / "versions")  # every file but the pointer
    time.sleep(3 * served["config"]["pool"]["refresh_s"])
    assert "halfway" not in listed(base)
    response = requests.post(f"{base}/styles/halfway", data=photo_bytes(), timeout=60)
    assert response.status_code == 404 and "unknown style 'halfway'" in response.json()["error"]


def test_two_styles_requested_together_run_side_by_side_on_the_replicas_two_cores(served):
    """The served pool replica reserved two CPUs: two styles' requests run at once, one per core. The
    replica's own record says so (a run that started while another was going), not a stopwatch."""
    from serve.metrics import EXPORTED
    from test_serving_for_weeks import metric, scrape

    base, big = served["base"], photo_bytes((640, 640), seed=6)  # a second or more of one core each

    def stylise(style: str) -> requests.Response:
        response = requests.post(f"{base}/styles/{style}?max_side=640", data=big, timeout=120)
        assert response.status_code == 200, response.text
        return response

    for style in ("alpha", "beta"):
        stylise(style)  # loaded, so the pair measures running only
    before = metric(scrape(served), EXPORTED["side_by_side"])
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as clients:
        list(clients.map(stylise, ["alpha", "beta"]))
    wait_for(lambda: metric(scrape(served), EXPORTED["side_by_side"]) >= before + 1, 60, "a run recorded beside another")
