"""Serving side of style-factory: every published style at /styles/<style>, from one autoscaling pool of
replicas that run any style (model multiplexing), hot styles on applications of their own, and a page.

The layout: stylising.py (bytes to pixels to bytes) and style_model.py (a loaded model, batched) have
no Ray; style_pool.py, front_app.py and style_app.py are the Serve deployments; http_input.py parses
requests; registry_view.py is the registry as clients see it; metrics.py is what operators scrape.
"""

import logging


def get_logger(name: str) -> logging.Logger:
    """A logger whose records reach the replica's log file: inside a replica Ray Serve configures only
    "ray.serve" and its children, and every other logger's INFO records are dropped."""
    return logging.getLogger(f"ray.serve.{name}")
