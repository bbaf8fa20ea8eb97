"""Runs the local-cluster blocks exactly as written, from a plain shell (no venv on PATH, a fresh HOME, so
a fresh Ray token), as a new user would: docs/clusters.md's first bash block (a training job submitted to
a local cluster), then the README's "Serve every style" block (the registry it published, served, and a
photo stylised with curl), then docs/orders.md's block (a painting ordered over HTTP, trained by the
order desk's Ray job, stylised with curl). Checks that the job published both styles and that each curl
got a picture.
Needs Ray's default ports (6379, 8265, 8000) free, so CI runs it after the suite.

    python3 .ci/readme_cluster_commands.py
"""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLAIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STYLISED = ROOT / "rocket-starry.jpg"  # what the README's curl writes
ORDERED = ROOT / "rocket-udnie.jpg"  # what docs/orders.md's curl writes


def first_bash_block(page: Path, after: str = "") -> str:
    text = page.read_text()
    return re.search(r"```bash\n(.*?)```", text[text.index(after):] if after else text, re.DOTALL).group(1)


def run_as_written(block: str, what: str, env: dict) -> bool:
    print(f"running {what}, as written:\n{block}", flush=True)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, env=env, timeout=900)
    if done.returncode != 0:
        subprocess.run([str(ROOT / ".venv" / "bin" / "ray"), "stop", "--force"], env={**env, "PATH": os.environ["PATH"]})
        print(f"{what} failed with exit code {done.returncode}", file=sys.stderr)
    return done.returncode == 0


def main() -> int:
    STYLISED.unlink(missing_ok=True)
    ORDERED.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="readme-home-") as home:
        env = {"HOME": home, "PATH": PLAIN_PATH, "LANG": "C.UTF-8", "TERM": "dumb"}
        if not run_as_written(first_bash_block(ROOT / "docs" / "clusters.md"), "docs/clusters.md's local-cluster block", env):
            return 1
        check = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c",
                                "from factory import registry; print(registry.list_styles('data/registry'))"],
                               cwd=ROOT, capture_output=True, text=True)
        if check.returncode != 0 or "starry_night" not in check.stdout or "the_scream" not in check.stdout:
            print(f"the job did not publish both styles to data/registry: {check.stdout}{check.stderr}", file=sys.stderr)
            return 1
        if not run_as_written(first_bash_block(ROOT / "README.md", "## Serve every style"), "the README's serving block", env):
            return 1
        if not run_as_written(first_bash_block(ROOT / "docs" / "orders.md"), "docs/orders.md's ordering block", env):
            return 1
    sizes = {}
    for path, what in ((STYLISED, "the README's curl"), (ORDERED, "docs/orders.md's curl")):
        picture = path.read_bytes() if path.exists() else b""
        path.unlink(missing_ok=True)
        if not picture.startswith(b"\xff\xd8"):
            print(f"{what} did not write a JPEG ({len(picture)} bytes)", file=sys.stderr)
            return 1
        sizes[what] = len(picture)
    print(f"the local-cluster blocks ran as written: published {check.stdout.strip()}, and the curls got JPEGs back: {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
