"""Train a batch of ordered styles: the Ray job the order desk (serve/order_desk.py) submits.

    python factory/train_orders.py --registry data/registry --config configs/tiny.yaml --orders o1..,o2..

It reads the orders from the registry's storage (factory/orders.py) and trains them with train_all's
own code path: the config's recipe, packs, checkpoints, publishing and quality figures. Orders for
networks of their own train as one pack (one content stream and one VGG-19 for all of them); orders
that join a published family train only their style vectors against its frozen network. The config's
own styles are not trained: this run's styles are the orders'.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script, as the desk's job entrypoint does
    # the repository, not this script's folder: its onnx_model.py would shadow ONNX Runtime's own
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import yaml

from factory import orders, registry, storage, train_all

RUN_NAME = "orders"


def order_styles(registry_uri: str, order_ids: list[str], join_steps: int, join_learning_rate: float) -> list[dict]:
    """The config's styles for these orders; stops on an order that is no longer one to train."""
    styles = []
    for order_id in order_ids:
        order = orders.read(registry_uri, order_id)
        if order.family and not storage.exists(registry.family_uri(registry_uri, order.family, filename=registry.POINTER_FILE)):
            # Without a published version the factory would train a new family from this one painting.
            raise ValueError(f"order {order_id} joins family {order.family!r}, which the registry does not have")
        style = {"name": order.name, "image": orders.order_uri(registry_uri, order_id, orders.PAINTING_FILE)}
        if order.family:
            style.update(family=order.family, steps=join_steps, learning_rate=join_learning_rate)
        elif order.width is not None:
            style["width"] = order.width
        styles.append(style)
    return styles


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", required=True, help="the registry the orders are in and publish to")
    parser.add_argument("--config", required=True, help="the recipe: a factory config YAML (its styles are ignored)")
    parser.add_argument("--orders", required=True, help="comma-separated order ids")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="as train_all's --set")
    parser.add_argument("--join-steps", type=int, help="steps of a style joining a family (default: a fifth of the config's)")
    parser.add_argument("--join-learning-rate", type=float, default=0.1, help="its vector's learning rate")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        order_ids = [orders.check_order_id(part.strip()) for part in args.orders.split(",") if part.strip()]
        base = yaml.safe_load(storage.read_bytes(args.config)) or {}
        config_steps = train_all.load_config(args.config, args.overrides).training.steps
        join_steps = args.join_steps or max(1, math.ceil(config_steps / 5))
        styles = order_styles(args.registry, order_ids, join_steps, args.join_learning_rate)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    own = sum(1 for style in styles if "family" not in style)
    with tempfile.TemporaryDirectory(prefix="orders-") as folder:
        config = Path(folder, "orders.yaml")
        config.write_text(yaml.safe_dump({**base, "name": RUN_NAME, "styles": styles}))
        # Last, so that they win over the operator's: the orders' registry, and every own network in one pack.
        fixed = [f"registry={args.registry}", f"training.styles_per_pack={max(1, own)}"]
        return train_all.main(["--config", str(config), "--no-contact-sheet", *sum((["--set", item] for item in args.overrides + fixed), [])])


if __name__ == "__main__":
    sys.exit(main())
