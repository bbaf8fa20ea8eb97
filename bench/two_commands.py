"""The README's two commands, timed: the main job on the embedded default, and the test suite; and CI.

    python bench/two_commands.py main-job                # runs it (3 to 5 minutes on 2 cores) and records it
    python bench/two_commands.py tests --log ci.log      # records a finished pytest run from its output
    python bench/two_commands.py ci --log ci.log         # records each step of a `.ci/run` from its output

The main job runs as the README runs it (`factory/train_all.py`, no flags but a fresh registry and
checkpoint folder, so that an earlier run's "already published" cannot make it look fast); its two
quality figures per style are read back from the models it published. The suite is too long to run
twice, so its time and summary come from the output of a run (CI's, or a fresh clone's `.ci/run`).
Both go to section `two_commands` of today's results file, CI's steps to `ci_time`; `python bench/tables.py`
puts them in the README and docs/tests.md.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import results
from factory import registry

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r"=+ (?P<summary>\d+ passed.*?) in (?P<seconds>[\d.]+)s")
CI_STEP = re.compile(r"^== ci step: (?P<step>.+) took (?P<seconds>\d+) s$", re.MULTILINE)


def current_section() -> dict:
    path = results.results_path()
    return json.loads(path.read_text()).get("two_commands", {}) if path.exists() else {}


def main_job() -> dict:
    with tempfile.TemporaryDirectory(prefix="main-job-") as folder:
        started = time.perf_counter()
        subprocess.run([sys.executable, "factory/train_all.py", "--registry", f"{folder}/registry",
                        "--set", f"training.storage_path={folder}/checkpoints"], cwd=ROOT, check=True)
        seconds = time.perf_counter() - started
        quality = {style: registry.read_metadata(f"{folder}/registry", style)["quality"]
                   for style in registry.list_styles(f"{folder}/registry")}
    photos = {", ".join(figures.get("photos", {})) or figures.get("photo", "?") for figures in quality.values()}  # the held-out evaluation photos
    return {"seconds": round(seconds, 1), "quality_photo": ", ".join(sorted(photos)),
            "quality": {style: {"colour_shift": figures["colour_shift"], "structure_kept": figures["structure_kept"]}
                        for style, figures in quality.items()}}


def tests_from_log(log: Path) -> dict:
    matches = list(SUMMARY.finditer(log.read_text(errors="replace")))
    if not matches:
        raise SystemExit(f"no pytest summary line ('N passed ... in S s') in {log}")
    last = matches[-1]  # the suite's; a log may hold other pytest runs before it
    return {"seconds": float(last.group("seconds")), "summary": last.group("summary")}


def ci_from_log(log: Path) -> dict:
    # In the order they ran: a list, since the results file sorts its objects' keys.
    steps = [[match.group("step"), int(match.group("seconds"))] for match in CI_STEP.finditer(log.read_text(errors="replace"))]
    if not steps:
        raise SystemExit(f"no '== ci step: ... took N s' lines in {log}: the output of .ci/run is needed")
    return {"steps": steps, "seconds": sum(seconds for _, seconds in steps)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("main-job", "tests", "ci"))
    parser.add_argument("--log", type=Path, help="for tests: the output of a pytest run of the whole suite")
    args = parser.parse_args()
    if args.what != "main-job" and args.log is None:
        parser.error(f"{args.what} needs --log: the output of a run")
    if args.what == "ci":
        figures = ci_from_log(args.log)
        print(json.dumps(figures, indent=2))
        print(f"figures: {results.record('ci_time', figures)}")
        return 0
    figures = current_section()
    if args.what == "main-job":
        figures["main_job"] = main_job()
    else:
        figures["tests"] = tests_from_log(args.log)
    figures.pop("measured_at", None)
    print(json.dumps(figures, indent=2))
    print(f"figures: {results.record('two_commands', figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
