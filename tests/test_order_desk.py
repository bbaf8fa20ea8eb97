"""The order desk's rules on a real registry folder, without Serve: each token's limits, the queue's
bound, names, batching, and what a run's status and log do to its orders. The Ray jobs are a scripted
stand-in here (tests/test_orders.py runs real ones): a run's states are what this desk reacts to."""

import pytest

from factory import orders
from serve.order_desk import DAY_S, Desk
from serve.order_tokens import TOKENS_VARIABLE, OrderTokens, TokenFileError, parse_tokens
from serve.settings import OrdersSettings
from serving import publish_random_family

INFO = {"bytes": 3, "width": 64, "height": 64, "sha256": "-"}


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class ScriptedJobs:
    """Ray's job API as the desk uses it: submit, status, logs, stop; states set by the test."""

    def __init__(self):
        self.submitted, self.stopped, self.states, self.log_text = [], [], {}, {}
        self.refuse, self.logs_gone, self.while_submitting = None, False, None

    def submit(self, job_id, entrypoint, resources, runtime_env):
        if self.while_submitting:
            self.while_submitting()
        if self.refuse:
            raise self.refuse
        self.submitted.append((job_id, entrypoint))
        self.states[job_id] = ("RUNNING", "")

    def status(self, job_id):
        return self.states[job_id]

    def logs(self, job_id):
        if self.logs_gone:
            raise RuntimeError("Request failed with status code 500: the agent on the driver's node is gone")
        return self.log_text.get(job_id, "")

    def stop(self, job_id):
        self.stopped.append(job_id)
        self.states[job_id] = ("STOPPED", "")


@pytest.fixture
def make_desk(tmp_path):
    publish_random_family(tmp_path / "registry", names=("a", "b"), family="fam")

    def make(jobs=None, **settings) -> Desk:
        desk = Desk(str(tmp_path / "registry"), OrdersSettings(enabled=True, working_dir="/srv/factory", **settings),
                    jobs or ScriptedJobs(), clock=Clock())
        desk.load()
        return desk

    return make


def place(desk: Desk, name: str, owner: str = "owner-a", family: str | None = "", width=None):
    desk.clock.now += 1  # orders a second apart, as clients place them
    return desk.place(owner, name, family, width, b"png", INFO)


def test_each_token_has_its_own_limits_and_the_queue_its_bound(make_desk):
    desk = make_desk(per_token_concurrent=2, per_token_per_day=3, max_queued=3, max_running=0)
    assert [place(desk, name).status for name in ("one", "two")] == [202, 202]
    first_placed = desk.clock.now - 1
    busy = place(desk, "three")
    assert busy.status == 429 and "per_token_concurrent" in busy.body and busy.retry_after_s >= 1
    assert place(desk, "three", owner="owner-b").status == 202  # another token is not held back by the first's
    full = place(desk, "four", owner="owner-c")
    assert full.status == 503 and "queue is full" in full.body
    desk.cancel("owner-a", desk.list("owner-a").body[0]["id"])
    assert place(desk, "five").status == 202  # a place in the queue and under the token's limit again
    desk.cancel("owner-a", desk.list("owner-a").body[0]["id"])
    desk.clock.now += 3600
    daily = place(desk, "six")
    assert daily.status == 429 and "last 24 hours" in daily.body
    assert daily.retry_after_s == pytest.approx(first_placed + DAY_S - desk.clock.now)  # when the first of the day's three leaves the window


def test_a_name_is_taken_while_its_order_lives_and_free_once_it_failed_or_was_cancelled(make_desk):
    desk = make_desk(max_running=0)
    first = place(desk, "shared_name").body["id"]
    assert place(desk, "shared_name", owner="owner-b").status == 409
    assert place(desk, "a", owner="owner-b").status == 409  # a published style (of the family)
    desk.cancel("owner-a", first)
    assert place(desk, "shared_name", owner="owner-b").status == 202


def test_an_order_joins_the_default_family_unless_it_says_otherwise(make_desk):
    desk = make_desk(default_family="fam", max_running=0)
    assert place(desk, "joins", family=None).body["family"] == "fam"
    assert place(desk, "own", family="").body["family"] is None
    refused = place(desk, "wide", family=None, width=0.5)
    assert refused.status == 400 and "width applies to a network of its own" in refused.body
    assert "published families: fam" in place(desk, "lost", family="nofam").body


def test_orders_that_arrive_together_share_a_run_and_others_wait_for_the_next(make_desk):
    jobs = ScriptedJobs()
    desk = make_desk(jobs, batch_max=2, batch_wait_s=5, max_running=1, max_queued=10, per_token_concurrent=9)
    own = [place(desk, name).body["id"] for name in ("own_one", "own_two", "own_three")]
    joining = place(desk, "joins", family="fam").body["id"]
    desk.round()
    assert len(jobs.submitted) == 1  # the first two fill a run at once; one run at a time
    job, entrypoint = jobs.submitted[0]
    assert f"--orders {own[0]},{own[1]}" in entrypoint and entrypoint.startswith("cd /srv/factory && python factory/train_orders.py")
    assert [desk.orders[order_id].status for order_id in own] == ["training", "training", "queued"]
    jobs.log_text[job] = "[orders-x]   own_one step 4/12  (...)\n[orders-x]   own_two step 6/12  (...)\n"
    desk.clock.now += 10
    desk.round()
    assert (desk.orders[own[0]].step, desk.orders[own[0]].steps, desk.orders[own[1]].step) == (4, 12, 6)
    assert desk.get("owner-a", own[0]).body["eta_s"] == pytest.approx(10 / 4 * 8)
    jobs.states[job] = ("SUCCEEDED", "")
    desk.round()
    # The run ended without publishing them: they fail, saying so, and the next queued order starts alone
    # (it has waited batch_wait_s for a partner of its kind).
    assert desk.orders[own[0]].status == "failed" and "without publishing 'own_one'" in desk.orders[own[0]].reason
    assert len(jobs.submitted) == 2 and f"--orders {own[2]} " in jobs.submitted[1][1]
    assert desk.orders[joining].status == "queued"  # a join never shares a run with networks of their own


def test_a_failed_run_is_tried_again_then_fails_with_its_error_and_a_lost_one_is_queued_again(make_desk):
    jobs = ScriptedJobs()
    desk = make_desk(jobs, batch_wait_s=0, max_attempts=2)
    order_id = place(desk, "flaky").body["id"]
    desk.round()
    first = jobs.submitted[-1][0]
    jobs.states[first] = ("FAILED", "Job entrypoint command failed with exit code 1")
    jobs.log_text[first] = "loading\nerror: the recipe's data.source is empty\n"
    desk.round()  # back in the queue, and started again in the same round
    assert desk.orders[order_id].attempts == 2 and len(jobs.submitted) == 2 and jobs.submitted[1][0] != first
    second = jobs.submitted[-1][0]
    jobs.states[second] = ("FAILED", "Job entrypoint command failed with exit code 1")
    jobs.log_text[second] = jobs.log_text[first]
    desk.round()
    assert desk.orders[order_id].status == "failed"
    assert desk.orders[order_id].reason == "error: the recipe's data.source is empty"

    lost = place(desk, "lost_one").body["id"]
    desk.round()
    jobs.states[jobs.submitted[-1][0]] = ("LOST", "the job is gone from the cluster (its head node restarted)")
    desk.round()
    assert desk.orders[lost].status == "training" and desk.orders[lost].job != jobs.submitted[-2][0]


def test_a_new_desk_finds_the_orders_and_their_runs_in_storage(make_desk):
    jobs = ScriptedJobs()
    desk = make_desk(jobs, batch_wait_s=0)
    order_id = place(desk, "lasting").body["id"]
    desk.round()
    again = Desk(desk.registry, desk.settings, jobs, clock=desk.clock)
    again.round()
    assert again.orders[order_id].status == "training" and again.orders[order_id].job == jobs.submitted[0][0]
    assert len(jobs.submitted) == 1  # followed, not started twice
    assert orders.read(desk.registry, order_id).painting == INFO


def test_tokens_come_from_the_environment_and_a_file_read_again_when_it_changes(tmp_path, monkeypatch):
    monkeypatch.setenv(TOKENS_VARIABLE, "env-token-0123456789abcdef, other-token-0123456789")
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("# clients\nstudio file-token-0123456789abcd\n")
    tokens = OrderTokens(str(tokens_file))
    assert tokens.owner("Bearer env-token-0123456789abcdef") == orders.token_fingerprint("env-token-0123456789abcdef")
    assert tokens.owner("Bearer file-token-0123456789abcd") is not None
    assert tokens.owner("Bearer file-token-0123456789abcX") is None
    assert tokens.owner("bearer other-token-0123456789") is not None  # the scheme is case-insensitive (RFC 7235)
    assert tokens.owner(None) is None and tokens.owner("Basic env-token-0123456789abcdef") is None
    tokens_file.write_text("studio new-file-token-0123456789\n")  # revoked and replaced, no deploy
    tokens.checked_at = 0.0
    assert tokens.owner("Bearer file-token-0123456789abcd") is None and tokens.owner("Bearer new-file-token-0123456789")
    tokens_file.write_text("short\n")  # a broken edit keeps the tokens last read
    tokens.checked_at = 0.0
    assert tokens.owner("Bearer new-file-token-0123456789") and "at least 16 characters" in tokens.problem
    monkeypatch.setenv(TOKENS_VARIABLE, "short")  # refused with a reason, never a server error
    assert tokens.owner("Bearer short") is None and TOKENS_VARIABLE in tokens.problem
    with pytest.raises(TokenFileError, match="line 2: a token must be at least 16"):
        parse_tokens("ok-token-0123456789abcdef\nlabel tiny\n", "tokens")


def test_a_token_sees_and_cancels_only_its_own_orders(make_desk):
    desk = make_desk(max_running=0)
    mine = place(desk, "mine").body["id"]
    assert desk.get("owner-b", mine).status == 404 and desk.cancel("owner-b", mine).status == 404
    assert desk.list("owner-b").body == [] and [seen["id"] for seen in desk.list("owner-a").body] == [mine]
    assert desk.get("owner-a", mine).body["position"] == 1


def test_cancelling_a_training_order_stops_its_run_and_its_partners_go_back_to_the_queue(make_desk):
    jobs = ScriptedJobs()
    desk = make_desk(jobs, batch_max=2, batch_wait_s=0)
    doomed, partner = (place(desk, name).body["id"] for name in ("doomed", "partner"))
    desk.round()
    job = desk.orders[doomed].job
    assert desk.cancel("owner-a", doomed).body["status"] == "cancelled"
    assert jobs.stopped == [job]
    assert (desk.orders[partner].status, desk.orders[partner].job) == ("queued", "")
    assert "another order in it was cancelled" in desk.orders[partner].reason
    desk.round()  # the partner trains again, alone, in a run of its own
    assert desk.orders[partner].status == "training" and desk.orders[partner].job != job
    assert desk.cancel("owner-a", doomed).status == 409  # cancelled once is enough


def test_a_run_the_cluster_will_not_start_is_tried_again_next_round_then_fails_saying_why(make_desk):
    jobs = ScriptedJobs()
    desk = make_desk(jobs, batch_wait_s=0, max_attempts=2)
    order_id = place(desk, "unstartable").body["id"]
    jobs.refuse = TypeError("entrypoint_resources must be a dict")
    desk.round()  # one try a round, not a loop
    assert (desk.orders[order_id].status, desk.orders[order_id].attempts) == ("queued", 1)
    desk.round()
    assert desk.orders[order_id].status == "failed" and "could not be started: TypeError" in desk.orders[order_id].reason


def test_an_order_cancelled_while_its_run_is_being_submitted_leaves_no_run_behind(make_desk):
    jobs = ScriptedJobs()
    desk = make_desk(jobs, batch_wait_s=0)
    order_id = place(desk, "hasty").body["id"]
    jobs.while_submitting = lambda: desk.cancel("owner-a", order_id)
    desk.round()
    job = jobs.submitted[0][0]
    assert desk.orders[order_id].status == "cancelled" and jobs.states[job][0] == "STOPPED"


def test_a_finished_run_whose_log_is_gone_is_judged_by_the_registry(make_desk):
    jobs = ScriptedJobs()
    desk = make_desk(jobs, batch_wait_s=0)
    order_id = place(desk, "a_lost_log").body["id"]
    desk.round()
    jobs.states[desk.orders[order_id].job], jobs.logs_gone = ("SUCCEEDED", ""), True
    desk.round()
    assert desk.orders[order_id].status == "failed" and "without publishing" in desk.orders[order_id].reason


def test_a_job_runs_in_the_checkout_or_in_the_copy_its_runtime_env_ships(make_desk):
    from serve.order_desk import job_runtime_env

    here = make_desk()
    batch = [here.orders[place(here, "somewhere").body["id"]]]
    assert here.entrypoint(batch).startswith("cd /srv/factory && python factory/train_orders.py --registry ")
    assert job_runtime_env(here.settings)["env_vars"]["PYTHONPATH"].startswith("/srv/factory")
    shipped = make_desk(runtime_env={"working_dir": "https://example.com/style-factory.zip"})
    assert shipped.entrypoint(batch).startswith("python factory/train_orders.py")
    assert job_runtime_env(shipped.settings) == {"working_dir": "https://example.com/style-factory.zip"}
