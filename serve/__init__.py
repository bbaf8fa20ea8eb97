"""Serving side of style-factory: each published style as its own autoscaling Ray Serve endpoint."""
