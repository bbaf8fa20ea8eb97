"""Ordering a style over HTTP against a real `ray start` cluster: Serve's front door and order desk, Ray
jobs that train the orders with the factory's code, the registry on disk. A painting goes in, a live
style comes out; two orders train as one pack; a cancelled order publishes nothing; the desk's replica
killed mid-order loses nothing; bad paintings, taken names, tokens and a full queue are refused."""

import io
import os
import signal
import time

import pytest
import requests
from PIL import Image

from conftest import REPO_ROOT
from factory import orders, registry
from factory_runs import write_config
from serving import deploy, publish_random_family, publish_random_style
from test_page import page  # noqa: F401 (a fixture: Chromium)

pytestmark = pytest.mark.slow
TOKEN_A, TOKEN_B = "token-a-0123456789abcdef", "token-b-0123456789abcdef"
PAINTING = (REPO_ROOT / "data" / "samples" / "styles" / "udnie.jpg").read_bytes()
PHOTO = (REPO_ROOT / "data" / "samples" / "held_out" / "rocket.jpg").read_bytes()


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def desk(ray_head, serve_http_port, tmp_path_factory):
    """The front door with orders on: a published family 'fam' that orders join by default, a published
    style 'alpha', two tokens in a file, one run at a time of at most two orders, a queue of two."""
    address, env = ray_head
    root = tmp_path_factory.mktemp("orders")
    registry_root = root / "registry"
    publish_random_family(registry_root, names=("a", "b"), family="fam")
    publish_random_style(registry_root, "alpha", 0)
    tokens = root / "tokens"
    tokens.write_text(f"# label token\nclient-a {TOKEN_A}\n{TOKEN_B}\n")
    recipe = write_config(root / "recipe.yaml", source=str(REPO_ROOT / "data" / "samples" / "content"), registry="unused",
                          storage_path=str(root / "checkpoints"), steps=12, num_workers=1, batch_size=2, log_every=2,
                          checkpoint_every=6, cpus_per_worker=2)
    config = {
        "registry": str(registry_root),
        "http": {"host": "127.0.0.1", "port": serve_http_port},
        "pool": {"refresh_s": 1, "model_cache_mb": 64},
        "defaults": {"num_cpus": 0.5, "max_replicas": 1, "health_check_period_s": 2},
        "orders": {"enabled": True, "training_config": str(recipe), "default_family": "fam", "tokens_file": str(tokens),
                   "join_steps": 4, "max_queued": 2, "max_running": 1, "batch_max": 2, "batch_wait_s": 2,
                   "per_token_concurrent": 3, "poll_s": 0.5},
    }
    done = deploy(config, root / "serving.yaml", address, env)
    assert done.returncode == 0, done.stderr[-3000:]
    yield {"base": f"http://127.0.0.1:{serve_http_port}", "registry": str(registry_root), "address": address}
    from serve.deploy import _client

    _client(address).delete_applications()


def order(desk, token: str, name: str, family: str | None = None, painting: bytes = PAINTING, **fields) -> requests.Response:
    form = {"name": (None, name), **({"family": (None, family)} if family is not None else {}),
            **{key: (None, str(value)) for key, value in fields.items()}}
    return requests.post(f"{desk['base']}/orders", files={"painting": ("painting.jpg", painting), **form}, headers=auth(token), timeout=60)


def wait_for(desk, token: str, order_id: str, statuses: tuple, timeout_s: float = 300) -> dict:
    deadline, seen = time.time() + timeout_s, None
    while time.time() < deadline:
        answer = requests.get(f"{desk['base']}/orders/{order_id}", headers=auth(token), timeout=30)
        if answer.status_code == 200:  # 503 while the desk's replica is replaced
            seen = answer.json()
            if seen["status"] in statuses:
                return seen
            assert seen["status"] not in ("failed", "cancelled") or seen["status"] in statuses, seen
        time.sleep(0.5)
    pytest.fail(f"order {order_id} never became {statuses}; last seen: {seen}")


def replica_pid(address: str, deployment: str) -> int:
    from serve.deploy import _client

    details = _client(address).get_serve_details()
    replicas = details["applications"]["front"]["deployments"][deployment]["replicas"]
    return next(replica["pid"] for replica in replicas if replica["state"] == "RUNNING")


def orders_stored(desk) -> list[str]:
    folder = os.path.join(desk["registry"], orders.ORDERS_FOLDER)
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_no_token_a_wrong_token_and_no_orders_where_they_are_off_are_refused(desk):
    for headers in ({}, auth("not-a-token-we-issued-0000"), {"Authorization": f"Basic {TOKEN_A}"}):
        answer = requests.post(f"{desk['base']}/orders", files={"painting": ("p.jpg", PAINTING), "name": (None, "x")},
                               headers=headers, timeout=30)
        assert answer.status_code == 401, answer.text
        assert answer.headers["WWW-Authenticate"].startswith("Bearer") and "Bearer <token>" in answer.json()["error"]
        assert requests.get(f"{desk['base']}/orders", headers=headers, timeout=30).status_code == 401
    assert orders_stored(desk) == []


def test_a_bad_painting_a_bad_or_taken_name_and_an_unknown_family_are_refused_before_anything_is_stored(desk):
    truncated = PAINTING[: len(PAINTING) // 3]
    tiny = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tiny, "PNG")
    for painting, status, words in ((truncated, 400, "the painting is unusable"), (b"not an image", 400, "not an image"),
                                    (tiny.getvalue(), 400, "at least 64 px")):
        answer = order(desk, TOKEN_A, "fine_name", painting=painting)
        assert (answer.status_code, words in answer.json()["error"]) == (status, True), answer.text
    assert order(desk, TOKEN_A, "../escape").status_code == 400
    taken = order(desk, TOKEN_A, "alpha")
    assert taken.status_code == 409 and "taken" in taken.json()["error"]
    unknown = order(desk, TOKEN_A, "fine_name", family="nofamily")
    assert unknown.status_code == 400 and "published families: fam" in unknown.json()["error"]
    assert order(desk, TOKEN_A, "fine_name", width=0.3, family="").status_code == 400
    assert orders_stored(desk) == []


def test_two_orders_train_as_one_pack_survive_a_killed_desk_and_serve_while_the_queue_stays_bounded(desk):
    # Two networks of their own (family= empty), at once: one run, one pack.
    placed = [order(desk, TOKEN_A, name, family="") for name in ("mine_one", "mine_two")]
    assert [answer.status_code for answer in placed] == [202, 202], [answer.text for answer in placed]
    ids = [answer.json()["id"] for answer in placed]
    assert placed[0].headers["Location"] == f"/orders/{ids[0]}"
    # The other token neither sees them nor may cancel them.
    assert requests.get(f"{desk['base']}/orders/{ids[0]}", headers=auth(TOKEN_B), timeout=30).status_code == 404
    assert requests.delete(f"{desk['base']}/orders/{ids[0]}", headers=auth(TOKEN_B), timeout=30).status_code == 404
    assert [entry["id"] for entry in requests.get(f"{desk['base']}/orders", headers=auth(TOKEN_A), timeout=30).json()] == ids[::-1]

    wait_for(desk, TOKEN_A, ids[0], ("training",))
    # While they train, the queue takes two more and refuses a third; a name being trained is taken.
    queued = [order(desk, TOKEN_B, name, family="") for name in ("later_one", "later_two")]
    assert [answer.status_code for answer in queued] == [202, 202], [answer.text for answer in queued]
    assert queued[1].json()["position"] == 2
    full = order(desk, TOKEN_B, "later_three", family="")
    assert full.status_code == 503 and int(full.headers["Retry-After"]) >= 1 and "queue is full" in full.json()["error"]
    assert order(desk, TOKEN_B, "mine_one", family="").status_code == 409
    for answer in queued:  # out of the queue, never trained
        cancelled = requests.delete(f"{desk['base']}/orders/{answer.json()['id']}", headers=auth(TOKEN_B), timeout=30)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"

    # The desk's replica dies mid-order: Serve starts another, which finds the orders and their run in storage.
    os.kill(replica_pid(desk["address"], "OrderDesk"), signal.SIGKILL)
    done = [wait_for(desk, TOKEN_A, order_id, ("published",)) for order_id in ids]
    stored = [orders.read(desk["registry"], order_id) for order_id in ids]
    assert stored[0].job == stored[1].job and stored[0].job.startswith("order-")
    assert stored[0].batch == stored[1].batch == ids and stored[0].attempts == 1
    runs = {registry.read_metadata(desk["registry"], name)["run_name"] for name in ("mine_one", "mine_two")}
    assert len(runs) == 1  # one pack
    assert done[0]["steps"] == 12 and done[0]["style_url"] == "/styles/mine_one"

    answer = requests.post(f"{desk['base']}{done[0]['style_url']}?max_side=64", data=PHOTO, timeout=60)
    assert answer.status_code == 200 and answer.headers["x-model-version"] == done[0]["version"]
    assert Image.open(io.BytesIO(answer.content)).size[0] == 64
    preview = requests.get(f"{desk['base']}{done[1]['preview_url']}", timeout=30)
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/jpeg"
    assert not any(registry.list_styles(desk["registry"]).count(name) for name in ("later_one", "later_two"))
    assert not os.path.exists(os.path.join(desk["registry"], "contact_sheet.jpg"))  # the catalogue's sheet is not an order's to write


def test_an_order_joins_the_default_family_and_a_cancelled_one_stops_its_run_and_publishes_nothing(desk):
    from ray.job_submission import JobSubmissionClient

    doomed = order(desk, TOKEN_A, "join_doomed")  # no family field: orders.default_family
    assert doomed.status_code == 202, doomed.text
    doomed_id = doomed.json()["id"]
    assert doomed.json()["family"] == "fam"
    wait_for(desk, TOKEN_A, doomed_id, ("training",))
    cancelled = requests.delete(f"{desk['base']}/orders/{doomed_id}", headers=auth(TOKEN_A), timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    job = orders.read(desk["registry"], doomed_id).job
    jobs = JobSubmissionClient(desk["address"])
    deadline = time.time() + 60
    while str(jobs.get_job_status(job)) not in ("JobStatus.STOPPED", "STOPPED"):
        assert time.time() < deadline, f"the cancelled order's job {job} is still {jobs.get_job_status(job)}"
        time.sleep(0.5)
    assert "join_doomed" not in registry.list_styles(desk["registry"])

    joined = order(desk, TOKEN_A, "join_live")
    assert joined.status_code == 202, joined.text
    done = wait_for(desk, TOKEN_A, joined.json()["id"], ("published",))
    metadata = registry.read_metadata(desk["registry"], "join_live")
    assert metadata["family"]["name"] == "fam" and metadata["steps"] == 4
    answer = requests.post(f"{desk['base']}/styles/join_live?max_side=64", data=PHOTO, timeout=60)
    assert answer.status_code == 200 and answer.headers["x-model-version"] == done["version"]
    listed = {entry["name"]: entry["status"] for entry in requests.get(f"{desk['base']}/orders", headers=auth(TOKEN_A), timeout=30).json()}
    assert listed == {"mine_one": "published", "mine_two": "published", "join_doomed": "cancelled", "join_live": "published"}


def test_the_page_orders_a_style_shows_its_progress_and_tries_it_on_a_photo(desk, page, tmp_path):
    (tmp_path / "painting.jpg").write_bytes(PAINTING)
    (tmp_path / "photo.jpg").write_bytes(PHOTO)
    page.goto(desk["base"] + "/")
    page.locator("#order").wait_for(timeout=30_000)  # shown because this server takes orders
    page.locator("#order summary").click()
    page.fill("#order-token", TOKEN_B)
    page.set_input_files("#order-painting", str(tmp_path / "painting.jpg"))
    page.fill("#order-name", "from_the_page")
    page.select_option("#order-family", "fam")
    page.click("#order-go")
    seen = set()
    deadline = time.time() + 300
    while not (text := page.locator("#order-status").text_content()).startswith("Live"):
        assert time.time() < deadline and page.locator("#order-status").get_attribute("class") != "error", text
        seen.add(text.split(":")[0].split(" (")[0])
        time.sleep(0.2)
    assert "Training" in seen or "Queued" in seen or "Publishing" in seen, seen  # progress was shown on the way
    assert page.locator(".style.selected").get_attribute("data-style") == "from_the_page"
    page.set_input_files("#photo", str(tmp_path / "photo.jpg"))
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Done: from_the_page')", timeout=60_000)
    assert page.locator("#result").evaluate("img => img.naturalWidth") > 0
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    wrong = page.evaluate("""async () => (await fetch('/orders', {headers: {Authorization: 'Bearer nope-nope-nope-nope'}})).status""")
    assert wrong == 401
