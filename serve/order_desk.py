"""The order desk: takes orders for new styles, keeps the queue and its limits, and runs the training.

One replica (serve/deploy.py) owns every order's order.json (factory/orders.py); the front door checks
the token and the painting and hands the order here. A thread looks at the desk every orders.poll_s:
it starts a Ray job (factory/train_orders.py, through Ray's job submission API) for the oldest queued
orders, batched, while fewer than orders.max_running run, and follows each job's status and log (steps
done) into its orders. The jobs are not this replica's: they run on the cluster where the recipe's
resources are, outlive a replica that is replaced, and a new replica finds them again from the orders'
records (the job ids are stored there before the job is submitted).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import shlex
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ray import serve
from ray.serve.config import RequestRouterConfig

from factory import orders, registry, storage
from factory.orders import ACTIVE, Order
from factory.style_names import validate_style_name
from serve.routing import ForgetfulRouter
from serve.settings import OrdersSettings

logger = logging.getLogger("ray.serve")
DAY_S = 24 * 3600
LISTED_ORDERS = 100
STUCK_ROUND_S = 300
CHECKOUT = Path(__file__).resolve().parent.parent
# A train loop's progress line: "[run]   starry_night step 25/150  ...".
PROGRESS_LINE = re.compile(r"\]\s+(\S+) step (\d+)/(\d+)\s")
PUBLISHED_LINE = re.compile(r"published (\S+) version (\S+) to ")


@dataclass(frozen=True)
class Answer:
    """What the front door answers: an HTTP status, a JSON body (or an error message), Retry-After."""

    status: int
    body: dict | list | str
    retry_after_s: float | None = None


class RayJobs:
    """The training runs, as Ray jobs (status, logs and stop come with them). The client is made on first
    use: a dashboard that is down when the desk starts delays the runs, not the front door's start."""

    def __init__(self, address: str | None = None):
        self.address, self._client = address, None

    @property
    def client(self):
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            address = self.address
            if address is None:  # inside the cluster: the dashboard the GCS names
                import ray

                address = ray.get_runtime_context().gcs_address
            self._client = JobSubmissionClient(address)
        return self._client

    def submit(self, job_id: str, entrypoint: str, resources: dict, runtime_env: dict) -> None:
        try:
            self.client.submit_job(entrypoint=entrypoint, submission_id=job_id, entrypoint_resources=resources or None,
                                   runtime_env=runtime_env, metadata={"started_by": "style-factory order desk"})
        except RuntimeError as error:
            if "already exists" not in str(error):  # submitted before a restart cut the record short: follow it
                raise

    def status(self, job_id: str) -> tuple[str, str]:
        """(PENDING | RUNNING | SUCCEEDED | FAILED | STOPPED | LOST, Ray's message)."""
        try:
            info = self.client.get_job_info(job_id)
        except RuntimeError as error:
            if "does not exist" in str(error) or "404" in str(error):
                return "LOST", "the job is gone from the cluster (its head node restarted)"
            raise
        return str(info.status.value if hasattr(info.status, "value") else info.status), info.message or ""

    def logs(self, job_id: str) -> str:
        return self.client.get_job_logs(job_id)

    def stop(self, job_id: str) -> None:
        self.client.stop_job(job_id)


def job_id_for(batch: list[Order]) -> str:
    """Derived from the batch, so that a job submitted just before a crash is found again, and only for
    the same orders (a job id that exists is followed, not submitted twice)."""
    ids = ",".join(order.id for order in batch)
    return f"order-{batch[0].id}-{batch[0].attempts}-{hashlib.sha256(ids.encode()).hexdigest()[:8]}"


def job_runtime_env(settings: OrdersSettings) -> dict:
    """The job's runtime_env: orders.runtime_env, and the checkout first on its Python path (the cluster's
    own path after it) where the job runs in the checkout."""
    runtime_env = {**settings.runtime_env}
    if not runtime_env.get("working_dir"):
        path = os.pathsep.join(part for part in (settings.working_dir, os.environ.get("PYTHONPATH", "")) if part)
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), "PYTHONPATH": path}
    return runtime_env


def batch_key(order: Order) -> tuple:
    """Orders that can train in one run: joining the same family, or networks of their own of one width."""
    return ("join", order.family) if order.family else ("own", order.width)


def last_error_line(log: str) -> str:
    for line in reversed(log.splitlines()[-200:]):
        if line.startswith("error:") or "Error" in line.split(":", 1)[0]:
            return line.strip()[:300]
    return ""


class Desk:
    """The orders and their rules, without Serve: `jobs` runs the training (RayJobs, or a test's own)."""

    @property
    def settings(self) -> OrdersSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: OrdersSettings) -> None:
        # Jobs run from this checkout unless told otherwise: the code the desk runs is the code they run.
        self._settings = settings if settings.working_dir else dataclasses.replace(settings, working_dir=str(CHECKOUT))

    def __init__(self, registry_uri: str, settings: OrdersSettings, jobs, clock=time.time):
        self.registry, self.jobs, self.clock = registry_uri, jobs, clock
        self.settings = settings
        self.lock = threading.RLock()
        self.orders: dict[str, Order] = {}
        self.unsaved: set[str] = set()  # orders whose record a storage fault kept from being written
        self.loaded = False

    # -- the records ------------------------------------------------------------------------------------

    def load(self) -> None:
        found = orders.read_all(self.registry)
        with self.lock:
            self.orders = {order.id: order for order in found}
            self.loaded = True

    def _save(self, order: Order) -> None:
        order.updated_at = self.clock()
        try:
            orders.write(self.registry, order)
            self.unsaved.discard(order.id)
        except Exception as error:  # storage down: kept in memory, written again next round
            logger.warning("order %s: its record could not be written (%s); trying again", order.id, error)
            self.unsaved.add(order.id)

    def _retry_saves(self) -> None:
        for order_id in list(self.unsaved):
            self._save(self.orders[order_id])

    # -- what clients ask -------------------------------------------------------------------------------

    def place(self, owner: str, name: str, family: str | None, width: float | None, painting: bytes, painting_info: dict) -> Answer:
        """A new order, or why not: 409 name taken, 400 unknown family, 503 queue full, 429 a token's limit."""
        settings = self.settings
        family = settings.default_family if family is None else family
        if family and width is not None:
            return Answer(400, f"width applies to a network of its own; a style joining family {family!r} has the family's width: "
                               "send family= (empty) to train a network of its own at that width")
        if family:
            try:
                validate_style_name(family)
            except ValueError as error:
                return Answer(400, f"family: {error}")
            if not storage.exists(registry.family_uri(self.registry, family, filename=registry.POINTER_FILE)):
                known = registry.list_families(self.registry)
                return Answer(400, f"there is no published family {family!r} to join; published families: {', '.join(known) or 'none'}; "
                                   "send family= (empty) to train a network of its own")
        now = self.clock()
        order_id = orders.new_order_id()
        try:  # before the lock: a large painting on S3 must not hold up every other order's answer
            orders.write_painting(self.registry, order_id, painting)
        except Exception as error:
            return Answer(503, f"the painting could not be stored ({type(error).__name__}); nothing was kept: retry later", 30)
        answer = self._reserve(owner, order_id, name, family, width, now, painting_info)
        if answer.status != 202:
            orders.delete_painting(self.registry, order_id)
        return answer

    def _reserve(self, owner: str, order_id: str, name: str, family: str, width: float | None, now: float, painting_info: dict) -> Answer:
        settings = self.settings
        with self.lock:
            if not self.loaded:
                return Answer(503, "the order desk is still reading its orders from storage", 10)
            mine = [order for order in self.orders.values() if order.owner == owner]
            taken = next((order for order in self.orders.values() if order.name == name and order.status in ACTIVE + ("published",)), None)
            if taken or storage.exists(storage.join(self.registry, name, registry.POINTER_FILE)):
                return Answer(409, f"the style name {name!r} is taken (a published style or an order being trained); choose another")
            queued = [order for order in self.orders.values() if order.status == "queued"]
            if len(queued) >= settings.max_queued:
                return Answer(503, f"the order queue is full ({len(queued)} orders wait); retry later", self.queue_wait_s())
            active = [order for order in mine if order.status in ACTIVE]
            if len(active) >= settings.per_token_concurrent:
                return Answer(429, f"this token has {len(active)} orders queued or training (orders.per_token_concurrent: "
                                   f"{settings.per_token_concurrent}); order again when one is done", self.queue_wait_s() or 60)
            today = sorted(order.created_at for order in mine if order.created_at > now - DAY_S)
            if len(today) >= settings.per_token_per_day:
                return Answer(429, f"this token placed {len(today)} orders in the last 24 hours (orders.per_token_per_day: "
                                   f"{settings.per_token_per_day})", today[0] + DAY_S - now)
            order = Order(id=order_id, owner=owner, name=name, family=family, width=None if family else width,
                          created_at=now, updated_at=now, painting=painting_info)
            try:
                orders.write(self.registry, order)
            except Exception as error:
                return Answer(503, f"the order could not be stored ({type(error).__name__}); nothing was kept: retry later", 30)
            self.orders[order.id] = order
            return Answer(202, self.view(order))

    def get(self, owner: str, order_id: str) -> Answer:
        with self.lock:
            order = self.orders.get(order_id)
            if order is None or order.owner != owner:  # another token's order is as good as absent
                return Answer(404, f"no order {order_id} for this token (GET /orders lists yours)")
            return Answer(200, self.view(order))

    def list(self, owner: str) -> Answer:
        with self.lock:
            mine = sorted((order for order in self.orders.values() if order.owner == owner), key=lambda order: -order.created_at)
            return Answer(200, [self.view(order) for order in mine[:LISTED_ORDERS]])

    def cancel(self, owner: str, order_id: str) -> Answer:
        """A queued order leaves the queue; a training one's run is stopped (the other orders in it go
        back to the queue, first in line) and nothing of it is published."""
        with self.lock:
            order = self.orders.get(order_id)
            if order is None or order.owner != owner:
                return Answer(404, f"no order {order_id} for this token (GET /orders lists yours)")
            if order.status not in ("queued", "training"):
                return Answer(409, f"order {order_id} is {order.status}: only a queued or training order can be cancelled"
                                   + (" (a published style is withdrawn with factory.registry_cli)" if order.status in ("publishing", "published") else ""))
            job = order.job if order.status == "training" else ""
            order.status, order.reason, order.finished_at = "cancelled", "cancelled by the client", self.clock()
            self._save(order)
            if job:
                for other in self._in_job(job):
                    other.attempts -= 1  # not its failure
                    self._requeue(other, "its run was stopped when another order in it was cancelled")
            answer = Answer(200, self.view(order))
        if job:
            try:
                self.jobs.stop(job)
            except Exception as error:  # the next round sees it still running and stops it again
                logger.warning("stopping job %s failed: %s", job, error)
        return answer

    # -- the training -----------------------------------------------------------------------------------

    def _in_job(self, job: str) -> list[Order]:
        return [order for order in self.orders.values() if order.job == job and order.status in ("training", "publishing")]

    def _requeue(self, order: Order, reason: str) -> None:
        order.status, order.job, order.batch, order.step, order.reason = "queued", "", [], 0, reason
        self._save(order)

    def running_jobs(self) -> list[str]:
        with self.lock:
            return sorted({order.job for order in self.orders.values() if order.status in ("training", "publishing")})

    def next_batch(self) -> list[Order]:
        """The oldest queued order and those queued after it that can share its run, once the run is
        full or the oldest has waited orders.batch_wait_s; [] when nothing should start now."""
        settings = self.settings
        queued = sorted((order for order in self.orders.values() if order.status == "queued"), key=lambda order: order.created_at)
        if not queued or len(self.running_jobs()) >= settings.max_running:
            return []
        key = batch_key(queued[0])
        batch = [order for order in queued if batch_key(order) == key][:settings.batch_max]
        waited = self.clock() - max(queued[0].created_at, queued[0].updated_at if queued[0].reason else 0)
        return batch if len(batch) >= settings.batch_max or waited >= settings.batch_wait_s else []

    def entrypoint(self, batch: list[Order]) -> str:
        settings = self.settings
        command = ["python", "factory/train_orders.py", "--registry", self.registry, "--config", settings.training_config,
                   "--orders", ",".join(order.id for order in batch), "--join-learning-rate", f"{settings.join_learning_rate:g}"]
        if settings.join_steps:
            command += ["--join-steps", str(settings.join_steps)]
        for item in settings.overrides:
            command += ["--set", item]
        run = " ".join(shlex.quote(part) for part in command)
        # With a runtime_env that ships the project, the job runs in Ray's copy of it, where it starts.
        return run if settings.runtime_env.get("working_dir") else f"cd {shlex.quote(settings.working_dir)} && {run}"

    def start_next(self) -> str | None:
        """Start the next batch's run; its job id is in its orders' records before the job is submitted."""
        with self.lock:
            batch = self.next_batch()
            if not batch:
                return None
            job = job_id_for(batch)
            for order in batch:
                order.status, order.job, order.batch, order.reason = "training", job, [other.id for other in batch], ""
                order.attempts += 1
                order.started_at, order.step, order.steps = self.clock(), 0, 0
                self._save(order)
            entrypoint = self.entrypoint(batch)
        try:
            self.jobs.submit(job, entrypoint, self.settings.entrypoint_resources, job_runtime_env(self.settings))
            logger.info("order desk: started %s for %s", job, ", ".join(order.name for order in batch))
        except Exception as error:  # the cluster refused it: an attempt spent, tried again next round
            logger.warning("order desk: submitting %s failed: %s", job, error)
            with self.lock:
                for order in batch:
                    if order.status == "training" and order.job == job:
                        why = f"the training job could not be started: {type(error).__name__}: {str(error)[:200]}"
                        self._fail(order, why) if order.attempts >= self.settings.max_attempts else self._requeue(order, why)
            return None
        with self.lock:  # every order of it cancelled while it was being submitted: it must not run
            orphaned = not self._in_job(job)
        if orphaned:
            self.jobs.stop(job)
        return job

    def follow(self, job: str) -> None:
        """Bring one running job's orders up to date with its status and log."""
        state, message = self.jobs.status(job)
        try:
            log = self.jobs.logs(job) if state in ("RUNNING", "SUCCEEDED", "FAILED") else ""
        except Exception as error:  # the driver's node is gone: a finished run is judged without its log
            if state == "RUNNING":
                raise
            logger.warning("order desk: the log of %s cannot be read (%s)", job, error)
            log = ""
        progress = {match.group(1): (int(match.group(2)), int(match.group(3))) for match in PROGRESS_LINE.finditer(log)}
        published = {match.group(1): match.group(2) for match in PUBLISHED_LINE.finditer(log)}
        with self.lock:
            members = self._in_job(job)
            if not members:  # every order in it was cancelled: make sure it stops
                if state in ("PENDING", "RUNNING"):
                    self.jobs.stop(job)
                return
            for order in members:
                if order.name in published:
                    self._published(order, published[order.name], final=state not in ("PENDING", "RUNNING"))
                elif state in ("PENDING", "RUNNING"):
                    step, steps = progress.get(order.name, (order.step, order.steps))
                    status = "publishing" if steps and step >= steps else "training"
                    if (step, steps, status) != (order.step, order.steps, order.status):
                        order.step, order.steps, order.status = step, steps, status
                        self._save(order)
                elif state == "SUCCEEDED":
                    self._published(order, None, final=True)
                elif state == "FAILED" and order.attempts < self.settings.max_attempts:
                    self._requeue(order, f"its run failed and is tried again: {last_error_line(log) or message[:300]}")
                elif state in ("FAILED", "STOPPED"):
                    why = "the run was stopped from outside the desk (ray job stop)" if state == "STOPPED" else (last_error_line(log) or message[:300])
                    self._fail(order, why)
                elif state == "LOST":
                    self._requeue(order, message)

    def _published(self, order: Order, version: str | None, final: bool) -> None:
        """Published once the registry says so; a finished run whose style the registry lacks failed it.
        (A version other than the run's is current when someone rolled back at once: still published.)"""
        try:
            current = registry.current_version(self.registry, order.name)
        except registry.ModelNotFound:
            current = None
        if current is None:
            if final:
                self._fail(order, f"the run finished without publishing {order.name!r}")
            return
        order.status, order.version, order.finished_at, order.reason = "published", current, self.clock(), ""
        order.step = order.steps
        self._save(order)

    def _fail(self, order: Order, why: str) -> None:
        order.status, order.reason, order.finished_at = "failed", why, self.clock()
        self._save(order)

    def round(self) -> None:
        """One look at everything: unsaved records, running jobs, the next batch."""
        if not self.loaded:
            self.load()
        with self.lock:
            self._retry_saves()
        for job in self.running_jobs():
            try:
                self.follow(job)
            except Exception as error:
                logger.warning("order desk: following %s failed: %s", job, error)
        while self.settings.enabled and self.start_next():
            pass

    # -- what clients see -------------------------------------------------------------------------------

    def typical_run_s(self, order: Order) -> float | None:
        """How long runs like this order's took lately (the median of the last ten), None before one."""
        kind = bool(order.family)
        done = sorted((other for other in self.orders.values() if other.status == "published" and bool(other.family) == kind
                       and other.started_at and other.finished_at), key=lambda other: other.finished_at)[-10:]
        return statistics.median(other.finished_at - other.started_at for other in done) if done else None

    def eta_s(self, order: Order) -> float | None:
        now = self.clock()
        typical = self.typical_run_s(order)
        if order.status in ("training", "publishing"):
            elapsed = now - (order.started_at or now)
            if order.step and order.steps:  # the rate so far, its start-up included
                return max(0.0, elapsed / order.step * (order.steps - order.step))
            return max(0.0, typical - elapsed) if typical else None
        if order.status == "queued" and typical:
            ahead = [other for other in self.orders.values() if other.status == "queued" and other.created_at < order.created_at]
            slots = max(1, self.settings.max_running) * self.settings.batch_max
            return (len(ahead) // slots + 1) * typical + self.settings.batch_wait_s
        return None

    def queue_wait_s(self) -> float:
        queued = [order for order in self.orders.values() if order.status == "queued"]
        estimates = [self.eta_s(order) for order in queued]
        return min((estimate for estimate in estimates if estimate), default=60.0)

    def view(self, order: Order) -> dict:
        seen = {
            "id": order.id, "name": order.name, "status": order.status, "family": order.family or None, "width": order.width,
            "created_at": order.created_at, "updated_at": order.updated_at, "step": order.step, "steps": order.steps,
            "eta_s": None if (eta := self.eta_s(order)) is None else round(eta, 1), "reason": order.reason or None,
            "url": f"/orders/{order.id}",
        }
        if order.status == "queued":
            seen["position"] = 1 + sum(1 for other in self.orders.values() if other.status == "queued" and other.created_at < order.created_at)
        if order.status == "published":
            seen.update(version=order.version, style_url=f"/styles/{order.name}",
                        preview_url=f"/styles/{order.name}/{registry.PREVIEW_FILE}")
        return seen


# The forgetful router as every deployment here has it (serve/routing.py), though the front's calls carry no model id.
@serve.deployment(name="OrderDesk", num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64,
                  request_router_config=RequestRouterConfig(request_router_class=ForgetfulRouter))
class OrderDesk:
    """The desk in Serve: one replica, its settings as user_config (reconfigure), its rounds on a thread."""

    def __init__(self, registry_uri: str):
        self.registry_uri = registry_uri
        self.desk: Desk | None = None
        self.thread: threading.Thread | None = None
        self.last_round = time.monotonic()

    def reconfigure(self, config: dict) -> None:
        settings = OrdersSettings(**config)
        if self.desk is None:
            self.desk = Desk(self.registry_uri, settings, RayJobs() if settings.enabled else None)
        else:
            self.desk.settings = settings
            if settings.enabled and self.desk.jobs is None:
                self.desk.jobs = RayJobs()
        if settings.enabled and self.thread is None:
            self.thread = threading.Thread(target=self._rounds, name="order-desk", daemon=True)
            self.thread.start()

    def _rounds(self) -> None:
        while True:
            try:
                self.desk.round()
            except Exception as error:  # storage or the dashboard unreachable: the next round tries again
                logger.warning("order desk round failed: %s", error)
            self.last_round = time.monotonic()
            time.sleep(self.desk.settings.poll_s)

    def check_health(self) -> None:
        """Fails for what a new replica fixes: a dead round thread, or a round stuck (a hung request to the
        dashboard or storage) far past orders.poll_s."""
        if self.thread is not None and not self.thread.is_alive():
            raise RuntimeError("the order desk's thread has stopped")
        stuck_s = time.monotonic() - self.last_round
        if self.thread is not None and stuck_s > max(STUCK_ROUND_S, 20 * self.desk.settings.poll_s):
            raise RuntimeError(f"the order desk's round has not finished for {stuck_s:.0f} s")

    def place(self, owner: str, name: str, family: str | None, width: float | None, painting: bytes, painting_info: dict) -> Answer:
        return self.desk.place(owner, name, family, width, painting, painting_info)

    def get(self, owner: str, order_id: str) -> Answer:
        return self.desk.get(owner, order_id)

    def list(self, owner: str) -> Answer:
        return self.desk.list(owner)

    def cancel(self, owner: str, order_id: str) -> Answer:
        return self.desk.cancel(owner, order_id)
