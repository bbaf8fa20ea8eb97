"""Orders for new styles, kept in the registry's storage: a client's painting and what became of it.

    _orders/<id>/painting      the painting as the client uploaded it (the front door validated it first)
    _orders/<id>/order.json    who ordered which name, joining which family, its status, progress and run

"_orders" is not a valid style name, so the registry never lists it as a style. The painting is written
first and order.json last, so an order that exists is whole. One process changes order.json: the order
desk (serve/order_desk.py); the training job (factory/train_orders.py) only reads. No Ray here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import secrets
from dataclasses import dataclass, field

from factory import storage

ORDERS_FOLDER = "_orders"
PAINTING_FILE, ORDER_FILE = "painting", "order.json"
STATUSES = ("queued", "training", "publishing", "published", "failed", "cancelled")
ACTIVE = ("queued", "training", "publishing")
ORDER_ID = re.compile(r"^o[0-9a-f]{16}$")


@dataclass
class Order:
    id: str
    # Who ordered it: the fingerprint of the client's token (token_fingerprint), never the token.
    owner: str
    # The style it becomes, published under this name.
    name: str
    # The published family it joins (only its style vector trains); "" for a network of its own.
    family: str
    # A network of its own's width (model.width); a joining style has its family's.
    width: float | None
    created_at: float
    status: str = "queued"
    updated_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    # Training progress, from the run's log: steps done of steps.
    step: int = 0
    steps: int = 0
    # Why it failed (or was put back in the queue), in a sentence.
    reason: str = ""
    # The Ray job training it, and the orders that job trains together (one pack).
    job: str = ""
    batch: list[str] = field(default_factory=list)
    attempts: int = 0
    # Once published: the style's version.
    version: str = ""
    # The painting's size in bytes and pixels, and its sha256.
    painting: dict = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Order":
        values = json.loads(data)
        known = {item.name for item in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


def new_order_id() -> str:
    return "o" + secrets.token_hex(8)


def check_order_id(order_id: str) -> str:
    """An order id from a URL, before it becomes a storage key."""
    if not isinstance(order_id, str) or not ORDER_ID.fullmatch(order_id):
        raise ValueError(f"{order_id!r} is not an order id (ids look like o0123456789abcdef, as POST /orders answered)")
    return order_id


def token_fingerprint(token: str) -> str:
    """What an order records of its client: enough to tell clients apart, useless to order with."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def order_uri(registry: str, order_id: str, filename: str = "") -> str:
    check_order_id(order_id)
    return storage.join(registry, ORDERS_FOLDER, order_id, *([filename] if filename else []))


def write_painting(registry: str, order_id: str, painting: bytes) -> None:
    """First: an order's folder without order.json is not an order (read_all skips it)."""
    storage.write_bytes(order_uri(registry, order_id, PAINTING_FILE), painting)


def delete_painting(registry: str, order_id: str) -> None:
    """The folder of an order refused after its painting was stored; a fault here leaves a folder read_all skips."""
    try:
        storage.delete_tree(order_uri(registry, order_id))
    except Exception:
        pass


def write(registry: str, order: Order) -> None:
    storage.write_bytes(order_uri(registry, order.id, ORDER_FILE), order.to_json())


def read(registry: str, order_id: str) -> Order:
    return Order.from_json(storage.read_bytes(order_uri(registry, order_id, ORDER_FILE)))


def read_all(registry: str) -> list[Order]:
    """Every whole order under the registry, oldest first (a folder without order.json is a write cut short)."""
    found = []
    for name in storage.list_subfolders(storage.join(registry, ORDERS_FOLDER)):
        if not ORDER_ID.fullmatch(name):
            continue
        try:
            found.append(read(registry, name))
        except FileNotFoundError:
            continue
    return sorted(found, key=lambda order: order.created_at)
