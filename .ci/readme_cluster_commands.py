"""Runs the README's local-cluster block ("On a Ray cluster", the first bash block) exactly as written,
from a plain shell: no venv on PATH, a fresh HOME (so a fresh Ray token), as a new user would. Then
checks that the job published its styles. Needs Ray's default ports (6379, 8265) free, so CI runs it
on its own, before the test suite.

    python3 .ci/readme_cluster_commands.py
"""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## On a Ray cluster"
PLAIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def readme_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index(SECTION):]
    return re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)


def main() -> int:
    block = readme_block()
    print(f"running, as written:\n{block}", flush=True)
    with tempfile.TemporaryDirectory(prefix="readme-home-") as home:
        env = {"HOME": home, "PATH": PLAIN_PATH, "LANG": "C.UTF-8", "TERM": "dumb"}
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, env=env, timeout=900)
        if done.returncode != 0:
            subprocess.run([str(ROOT / ".venv" / "bin" / "ray"), "stop", "--force"], env={**env, "PATH": os.environ["PATH"]})
            print(f"the README's cluster block failed with exit code {done.returncode}", file=sys.stderr)
            return 1
    check = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c",
                            "from factory import registry; print(registry.list_styles('data/registry'))"],
                           cwd=ROOT, capture_output=True, text=True)
    if check.returncode != 0 or "starry_night" not in check.stdout or "the_scream" not in check.stdout:
        print(f"the job did not publish both styles to data/registry: {check.stdout}{check.stderr}", file=sys.stderr)
        return 1
    print(f"the README's cluster block ran as written and published {check.stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
