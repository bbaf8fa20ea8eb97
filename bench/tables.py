"""The measured tables in README.md and docs/, written from bench/results/*.json: the one source of every
figure they show, so that a table cannot drift from what was measured.

    python bench/tables.py            # rewrite every table between its markers
    python bench/tables.py --check    # exit 1, naming the tables, where a page differs (tests/test_docs.py)

A page holds a table between `<!-- table: NAME -->` and `<!-- /table -->`; NAME is a renderer below,
which reads one section of one results file and says which (machine, date, file, section) under the
table. A bench writes its section (bench/results.py); running this script then updates the pages.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKED = re.compile(r"(<!-- table: (?P<name>[a-z_0-9]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.DOTALL)


def section(name: str) -> tuple[dict, str, str]:
    """(the section, its file's name, the machine) from the newest results file that has it."""
    for path in sorted(RESULTS.glob("*.json"), key=lambda path: path.stem[-10:], reverse=True):
        document = json.loads(path.read_text())
        if name in document:
            return document[name], path.name, document.get("device", "?")
    raise LookupError(f"no results file under bench/results has a section {name!r}: run the bench that writes it")


def source(name: str, file: str, device: str, measured_at: str) -> str:
    return f"*{device}, {measured_at[:10]}; `bench/results/{file}`, section `{name}`.*\n"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(round(seconds % 60)):02d} s"


def newest_with(name: str, key: str) -> tuple[dict, str]:
    """(section[key], its file) from the newest results file whose section has key."""
    for path in sorted(RESULTS.glob("*.json"), key=lambda path: path.stem[-10:], reverse=True):
        found = json.loads(path.read_text()).get(name, {})
        if key in found:
            return found[key], path.name
    return {"seconds": None, "summary": "not measured yet"}, ""


def two_commands() -> str:
    figures, file, device = section("two_commands")
    main = figures["main_job"]
    tests, tests_file = (figures["tests"], file) if "tests" in figures else newest_with("two_commands", "tests")
    if tests_file and tests_file != file:  # measured on another day: say which
        tests = {**tests, "summary": f"{tests['summary']} (`bench/results/{tests_file}`)"}
    styles = ", ".join(f"{style} {values['colour_shift']:.2f} / {values['structure_kept']:.2f}"
                       for style, values in sorted(main["quality"].items()))
    return table(["command (after the install)", "time", "what it printed"], [
        ["the main job", minutes(main["seconds"]), f"colour shift / structure kept: {styles} (the mean on held-out photos: {main['quality_photo']})"],
        ["the tests", minutes(tests["seconds"]) if tests["seconds"] else "-", tests["summary"]],
    ]) + "\n" + source("two_commands", file, device, figures["measured_at"])


def ci_time() -> str:
    try:
        figures, file, device = section("ci_time")
    except LookupError:
        return "*Not measured yet: run `bash .ci/run > ci.log`, then `python bench/two_commands.py ci --log ci.log`.*\n"
    rows = [[step, minutes(seconds)] for step, seconds in figures["steps"]]
    rows.append(["**all of `.ci/run`**", f"**{minutes(figures['seconds'])}**"])
    return table(["CI step", "time"], rows) + "\n" + source("ci_time", file, device, figures["measured_at"])


def cold_loads() -> str:
    figures, file, device = section("cold_loads")
    rows = []
    for way, label in (("reported_when_it_ends", "told when the load ends (before)"), ("reported_when_the_load_starts", "told when the load starts (now)")):
        result = figures[way]
        rows.append([label, " / ".join(str(count) for count in result["loads_per_round"]), f"{result['loads_per_style']:.2f}"])
    return table([f"the router is ({figures['replicas']} replicas, {figures['styles']} cold styles a round, "
                  f"{figures['concurrent']} first requests each over {figures['spread_s']:g} s)",
                  f"loads, rounds 1 to {figures['rounds']}", "loads a style (ideal 1)"], rows) \
        + "\n" + source("cold_loads", file, device, figures["measured_at"])


def cpu_stylise() -> str:
    figures, file, device = section("cpu_stylise")
    rows = [[f"{row['side']}x{row['side']}", f"{row['ours_onnxruntime_ms']:,.0f} ms", f"{row['ours_torch_ms']:,.0f} ms",
             f"{row['examples_torch_ms']:,.0f} ms", f"{row['ours_torch_ms'] / row['ours_onnxruntime_ms']:.2f}x",
             f"{row['max_abs_difference']:.4f}"] for row in figures["rows"]]
    return table(["size", "ONNX Runtime", "eager torch", "pytorch/examples' net, eager torch", "ONNX Runtime's speed-up",
                  "largest difference from torch"], rows) + "\n" + source("cpu_stylise", file, device, figures["measured_at"])


def serve_many() -> str:
    torch_run, file, device = section("serve_many_torch")
    onnx_run, _, _ = section("serve_many_onnxruntime")
    runs = [(torch_run, "pool"), (torch_run, "per_style_apps"), (onnx_run, "pool"), (onnx_run, "per_style_apps")]

    def cell(run, way, render):
        return render(run[way], run)

    rows = [
        ["styles (mixed traffic over)", *[f"{run[way]['styles']} ({run[way]['mixed_styles']})" for run, way in runs]],
        ["deploy", *[f"{run[way]['deploy_s']:.1f} s" for run, way in runs]],
        ["Serve's processes: RSS / PSS", *[f"{run[way]['memory']['processes']}: {run[way]['memory']['rss_mb'] / 1024:.2f} / "
                                           f"{run[way]['memory']['pss_mb'] / 1024:.2f} GB" for run, way in runs]],
        ["machine's used memory rise", *[f"{run[way]['machine_used_mb_rise'] / 1024:.2f} GB" for run, way in runs]],
        ["first answer from a never-requested style (second)", *[f"{run[way]['first_answer_s']:.2f} s ({run[way]['second_answer_s']:.2f} s)"
                                                                 for run, way in runs]],
        ["one request to each mixed style in turn", *[f"{run[way]['first_request_to_each_mixed_style_s']:.1f} s" for run, way in runs]],
        ["mixed traffic, requests/s", *[f"{run[way]['requests_per_second']:.2f}" for run, way in runs]],
        ["p50 / p99", *[f"{run[way]['p50_ms'] / 1e3:.2f} s / {run[way]['p99_ms'] / 1e3:.2f} s" for run, way in runs]],
        ["CPU per request, all processes", *[f"{sum(run[way]['cpu_ms_per_request'].values()):.0f} ms" for run, way in runs]],
        ["a style published while serving answers after", *[f"{run[way]['published_while_serving_answers_after_s']:.1f} s, no deploy"
                                                             if "published_while_serving_answers_after_s" in run[way] else "needs a deploy"
                                                             for run, way in runs]],
    ]
    header = ["", "pool, torch", "per-style apps (torch run)", "pool, `cpu_runtime: onnxruntime`", "per-style apps (ONNX Runtime run)"]
    return table(header, rows) + "\n" + source("serve_many_torch` and `serve_many_onnxruntime", file, device, torch_run["measured_at"])


def serve_soak() -> str:
    serve_default, file, device = section("serve_soak_serve_300x3")
    forgetful, _, _ = section("serve_soak_forgetful_300x3")

    def front(run):
        return [round["memory"]["rss_mb_by_role"]["front replica"] for round in run["rounds"]]

    def growth(run, role):
        return run["rounds"][-1]["memory"]["rss_mb_by_role"][role] - run["rounds"][0]["memory"]["rss_mb_by_role"][role]

    def statuses(run):
        total = sum(round["requests"] for round in run["rounds"])
        return f"{run['non_200']} of {total}"

    def latency(run):
        p50 = [round["p50_ms"] / 1e3 for round in run["rounds"]]
        p99 = [round["p99_ms"] / 1e3 for round in run["rounds"]]
        return f"{min(p50):.2f}-{max(p50):.2f} s / {min(p99):.2f}-{max(p99):.2f} s"

    rows = [
        ["front replica RSS after each round", ", ".join(f"{mb:,} MB" for mb in front(serve_default)), ", ".join(f"{mb:,} MB" for mb in front(forgetful))],
        ["front replica growth, first to last round", f"{growth(serve_default, 'front replica'):+,} MB", f"{growth(forgetful, 'front replica'):+,} MB"],
        ["HTTP proxy growth", f"{growth(serve_default, 'HTTP proxy'):+,} MB", f"{growth(forgetful, 'HTTP proxy'):+,} MB"],
        ["non-200 answers", statuses(serve_default), statuses(forgetful)],
        ["p50 / p99 per round", latency(serve_default), latency(forgetful)],
    ]
    return table(["300 styles x 3 versions", "Serve's default router", "`serve/routing.py` (ForgetfulRouter)"], rows) \
        + "\n" + source("serve_soak_serve_300x3` and `serve_soak_forgetful_300x3", file, device, serve_default["measured_at"])


FAMILY_ARMS = (("separate", "separate networks"), ("family_equal_flops", "family, equal FLOPs"),
               ("family_quarter_flops", "family, 1/4 of the FLOPs"))


def spread_cell(figure: dict, percent: bool = False, shown: str = "{:.2f}") -> str:
    """mean ± sd (min..max) of a bench/held_out_eval.py spread over seeds."""
    shown = "{:.0%}" if percent else shown
    return (f"{shown.format(figure['mean'])} ± {shown.format(figure['sd'])} "
            f"({shown.format(figure['min'])}..{shown.format(figure['max'])})")


def seeds_spread(values: list[float]) -> dict:
    import statistics

    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0, "min": min(values), "max": max(values)}


def family_arms(figures: dict) -> list[tuple[str, str]]:
    """(arm, its column's label): the three arms, and any quarter-FLOPs families with their vectors' own learning rate."""
    def label(settings: dict) -> str:
        parts = [f"vectors at lr {settings['vector_learning_rate']:g}"] if "vector_learning_rate" in settings else []
        return ", ".join(parts + (["no output norm"] if settings.get("output_norm") is False else []))

    extra = [(arm, f"family, 1/4 of the FLOPs, {label(settings)}") for arm, settings in figures.get("arm_settings", {}).items()]
    return [*FAMILY_ARMS, *extra]


def families() -> str:
    figures, file, device = section("families")
    runs, shares, styles = figures["runs"], figures["share_of_separate"], figures["styles"]
    seeds = list(runs)
    arms = family_arms(figures)

    def absolute(arm: str, key: str) -> str:  # the styles' mean, spread over the seeds
        import statistics

        return spread_cell(seeds_spread([statistics.mean(runs[seed][arm]["styles"][style][key] for style in styles) for seed in seeds]))

    rows = [
        ["steps", *[str(figures["steps"][arm]) for arm, _ in arms]],
        ["TFLOPs (transform networks and VGG-19, forward and backward)", *[f"{figures['total_flops'][arm] / 1e12:.1f}" for arm, _ in arms]],
        ["train seconds", *[spread_cell(seeds_spread([runs[seed][arm]["train_seconds"] for seed in seeds]), shown="{:.0f}") for arm, _ in arms]],
        ["colour shift, the styles' mean", *[absolute(arm, "colour_shift") for arm, _ in arms]],
        ["structure kept, the styles' mean", *[absolute(arm, "structure_kept") for arm, _ in arms]],
        ["held-out loss, the styles' mean (lower is better)", *[absolute(arm, "held_out_loss") for arm, _ in arms]],
        ["distinctness (mean abs. pixel difference between styles, 0-255)",
         *[spread_cell(seeds_spread([runs[seed][arm]["distinctness"] for seed in seeds])) for arm, _ in arms]],
    ]
    for key, label in (("colour_shift", "colour shift"), ("structure_kept", "structure kept"), ("distinctness", "distinctness"),
                       ("held_out_loss", "held-out loss")):
        goal = figures["goals"].get(key)
        verdicts = figures["verdicts"]

        def cell(arm: str) -> str:
            verdict = f" **{verdicts[arm][key]}**" if goal and arm in verdicts else ""
            return spread_cell(shares[arm][key], percent=True) + verdict

        rows.append([f"{label}, share of the separate networks' (same seed){f'; goal ≥ {goal:.0%}' if goal else ''}", "100%",
                     *[cell(arm) for arm, _ in arms[1:]]])
    note = (f"*mean ± sd (min..max) over seeds {', '.join(seeds)}; every figure on {len(figures['held_out_photos'])} photos no model "
            f"trained on ({', '.join(figures['held_out_photos'])}).*\n")
    return table(["", *[label for _, label in arms]], rows) + "\n" + note + source("families", file, device, figures["measured_at"])


def family_join() -> str:
    figures, file, device = section("family_join")
    grid = figures["grid"]
    rates = sorted({cell["learning_rate"] for cell in grid.values()})
    steps = sorted({cell["steps"] for cell in grid.values()})
    by_cell = {(cell["learning_rate"], cell["steps"]): cell for cell in grid.values()}
    rows = [[f"{rate:g}", *[f"{by_cell[rate, count]['loss_ratio']['mean']:.3f} ± {by_cell[rate, count]['loss_ratio']['sd']:.3f}" for count in steps]]
            for rate in rates]
    rows.append(["train time, share of its own network's", *[f"{by_cell[rates[0], count]['time_share']['mean']:.0%}" for count in steps]])
    best = figures["best"]
    note = (f"*held-out loss of {figures['fifth']} joining a family of {len(figures['family_styles'])} over its own network's ({figures['steps']} "
            f"steps), mean ± sd over seeds {', '.join(map(str, figures['seeds']))}, on {len(figures['held_out_photos'])} held-out photos. "
            f"{'Best within a fifth of the time' if figures['best_within_the_time'] else 'No cell within a fifth of the time; best'}: learning rate {best['learning_rate']:g}, {best['steps']} steps, "
            f"x{best['loss_ratio']['mean']:.3f} ± {best['loss_ratio']['sd']:.3f}; goal x1.10: **{figures['verdict']}**.*\n")
    return table(["learning rate \\ steps", *[str(count) for count in steps]], rows) + "\n" + note \
        + source("family_join", file, device, figures["measured_at"])


def family_goals() -> str:
    """The README's short form: the issue's goals for families, what was measured, and the verdict."""
    families_figures, families_file, device = section("families")
    join_figures, join_file, _ = section("family_join")
    draws_figures, draws_file, _ = section("family_draws")
    rows = []
    arm_settings = families_figures.get("arm_settings", {})
    quarter_families = [(arm, label) for arm, label in family_arms(families_figures)[2:]  # the quarter-FLOPs families but the ablation
                        if arm_settings.get(arm, {}).get("output_norm") is not False]
    for arm, label in quarter_families:
        shares, verdicts = families_figures["share_of_separate"][arm], families_figures["verdicts"][arm]
        rows += [[f"{label}: {name} ≥ {goal:.0%} of separate networks'", spread_cell(shares[key], percent=True), verdicts[key]]
                 for key, name, goal in (("colour_shift", "colour shift", families_figures["goals"]["colour_shift"]),
                                         ("structure_kept", "structure kept", families_figures["goals"]["structure_kept"]),
                                         ("distinctness", "distinctness", families_figures["goals"]["distinctness"]))]
    best = join_figures["best"]
    rows.append([f"a style joining a family: held-out loss ≤ 1.10x its own network's in ≤ 1/5 of its time",
                 f"x{best['loss_ratio']['mean']:.2f} ± {best['loss_ratio']['sd']:.2f} in {best['time_share']['mean']:.0%} "
                 f"(lr {best['learning_rate']:g}, {best['steps']} steps)", join_figures["verdict"]])
    rounds = draws_figures["round_ratios"]
    rows.append(["per-image draws no slower per image than per-step draws (this CPU)",
                 f"{draws_figures['per_image_over_per_step']:.2f}x (rounds {rounds['mean']:.2f} ± {rounds['sd']:.2f})", draws_figures["no_slower"]])
    files = ", ".join(f"`bench/results/{name}`" for name in sorted({families_file, join_file, draws_file}))
    return table(["goal (tiny settings, random VGG-19, held-out photos)", "measured, mean ± sd (min..max) over 3 seeds", "verdict"], rows) \
        + f"\n*{device}, {families_figures['measured_at'][:10]}; {files}, sections `families`, `family_join`, `family_draws`.*\n"


def family_draws() -> str:
    figures, file, device = section("family_draws")
    per_image = figures["median_seconds_per_image"]
    rows = [[label, f"{1e3 * per_image[key]:.1f}"] for key, label in (("per_step", "one style a step (before)"),
                                                                        ("per_image", "a style per image (now)"))]
    rows.append(["per image over per step", f"{figures['per_image_over_per_step']:.3f}x (each round's: {figures['round_ratios']['mean']:.3f} "
                 f"± {figures['round_ratios']['sd']:.3f}; no slower: {figures['no_slower']})"])
    return table([f"a family step of {figures['styles']} styles, batch {figures['batch']} of {figures['image_size']} px", "ms an image"], rows) \
        + "\n" + source("family_draws", file, device, figures["measured_at"])


def family_serving() -> str:
    figures, file, device = section("family_serving")
    rows = []
    for runtime, label in (("torch", "torch (the pool's CPU default)"), ("onnxruntime", "ONNX Runtime")):
        speeds = figures["images_per_second"][runtime]
        rows.append([label, f"{speeds['separate']:.2f}", f"{speeds['family']:.2f} ({speeds['family'] / speeds['separate']:.2f}x)",
                     f"{speeds['family_small_runs']:.2f} ({speeds['family_small_runs'] / speeds['separate']:.2f}x)"])
    return table(["images/s", f"{figures['styles']} separate networks", f"one family, one batch of {figures['styles'] * figures['per_style']}",
                  "one family, runs of 2"], rows) + "\n" + source("family_serving", file, device, figures["measured_at"])


def widths() -> str:
    figures, file, device = section("widths")
    latency = {row["side"]: row for row in figures["latency"]}
    shares = figures["share_of_full_width"]
    rows = []
    for width in ("1.0", "0.5", "0.25"):
        cells = [width, f"{figures['gmac_at_256'][width]:.2f}"]
        cells += [spread_cell(shares[width][key], percent=True) for key in ("colour_shift", "structure_kept", "held_out_loss")]
        for side in (512, 1024):
            row = latency[side]
            ort, eager = row[f"onnxruntime_ms_width_{width}"], row[f"torch_ms_width_{width}"]
            cells.append(f"{ort:,.0f} / {eager:,.0f} ({row['onnxruntime_ms_width_1.0'] / ort:.2f}x / {row['torch_ms_width_1.0'] / eager:.2f}x)")
        rows.append(cells)
    examples = "; ".join(f"{side}²: pytorch/examples' network in eager torch {row['examples_torch_ms']:,.0f} ms, ours at full width "
                         f"{row['torch_ms_width_1.0']:,.0f} ms" for side, row in sorted(latency.items()))
    note = (f"*quality: each width's figures over full width's of the same seed (mean ± sd (min..max) over seeds "
            f"{', '.join(map(str, figures['seeds']))}; held-out loss: lower is better), on {len(figures['held_out_photos'])} held-out photos. "
            f"ms: ONNX Runtime / eager torch, each runtime's own full width over this width in brackets. {examples}.*\n")
    return table(["width", "GMAC at 256²", "colour shift", "structure kept", "held-out loss", "512² ms, ORT / eager (speed-up)",
                  "1024² ms (the same)"], rows) + "\n" + note + source("widths", file, device, figures["measured_at"])


def orders() -> str:
    """bench/orders.py: from POST /orders to the first stylised image, and four orders batched against in a row."""
    figures, file, device = section("orders")
    join, own = figures["join_order_to_image_s"], figures["own_network_order_to_image_s"]
    batched, in_a_row = figures["four_batched"], figures["four_in_a_row"]
    runs = [entry["run_s"] for entry in join["each"]]
    if join["sd"] is None:
        join_verdict = "undecided (one order)"
    else:
        join_verdict = "met" if join["mean"] + join["sd"] <= 120 else "missed" if join["mean"] - join["sd"] > 120 else "undecided"
    ratio = figures["batched_throughput_ratio"]

    def training(entry: dict) -> str:
        return f"training {entry['training_s']:.0f} s at {entry['images_per_second_per_style']:.1f} img/s a style"

    rows = [
        ["an order joining a family: POST to first image", f"{join['mean']:.0f} s ± {join['sd'] or 0:.0f} ({join['min']:.0f}..{join['max']:.0f}) "
         f"over {len(join['each'])} orders; its run {min(runs):.0f}..{max(runs):.0f} s", "≤ 2 min", join_verdict],
        ["an order with a network of its own: POST to first image", f"{own['order_to_image_s']:.0f} s (its run {own['run_s']:.0f} s, {training(own)})", "", ""],
        ["four own-network orders at once, batched: all four answer", f"{batched['four_to_images_s']:.0f} s in {batched['runs']} run(s) "
         f"({batched['orders_per_hour']:.0f} orders/hour; {training(batched)})", "", ""],
        ["the same four one run after another (batch_max 1)", f"{in_a_row['four_to_images_s']:.0f} s in {in_a_row['runs']} runs "
         f"({in_a_row['orders_per_hour']:.0f} orders/hour; {training(in_a_row)})", "", ""],
        ["throughput, batched over in a row", f"x{ratio:.2f} (one measurement each)", "≥ 2x", "met" if ratio >= 2 else "missed"],
    ]
    note = f"*Recipe: {figures['recipe']}; the cluster: `ray start --head --num-cpus 4` on this machine.*\n"
    return table(["order", "measured", "goal", "verdict"], rows) + "\n" + note + source("orders", file, device, figures["measured_at"])


def batch_stylise() -> str:
    """bench/batch_stylise.py: a bulk job on Ray Data against a plain loop over the same photos."""
    figures, file, device = section("batch_stylise")
    rows = [[row["arm"], f"{row['images_per_s']:.2f}", f"{row['median_s']:.1f} s ({', '.join(f'{value:.1f}' for value in row['seconds'])})",
             f"x{row['over_loop']:.2f}", "" if row["arm"] == "loop" else f"x{row['over_loop_less_start']:.2f}"] for row in figures["rows"]]
    note = (f"*{figures['photos']} JPEGs of {figures['photo_size'].replace('x', ' x ')}, network width {figures['network_width']}, "
            f"batch {figures['batch_size']}, ONNX Runtime; {figures['rounds']} rounds, the arms alternating; the job's time includes "
            f"Ray Data's start, not Ray's; a job over one photo took {figures['job_start_s']:.1f} s (its start), taken off for the last column.*\n")
    return table(["arm", "images/s", "median (each round)", "over the loop", "less the job's start"], rows) + "\n" + note + source("batch_stylise", file, device, figures["measured_at"])


def flicker() -> str:
    """bench/flicker.py: flicker and the other figures with and without the stability loss, over seeds."""
    figures, file, device = section("flicker")
    shown = {"flicker_pan": "flicker, pan", "flicker_noise": "flicker, static + noise", "colour_shift": "colour shift",
             "structure_kept": "structure kept", "held_out_loss": "held-out loss", "train_images_per_second": "training img/s"}
    rows = []
    for weight in map(str, figures["weights"]):
        off = float(weight) == 0
        rows.append([f"{float(weight):g}" + (" (off)" if off else "")]
                    + [spread_cell(figures["figures"][weight][key]) + ("" if off else f"; x{figures['share_of_off'][weight][key]['mean']:.2f}")
                       for key in shown])
    clip = figures["clip"]
    note = (f"*the two styles' mean, mean ± sd (min..max) over seeds {', '.join(map(str, figures['seeds']))}; x: over stability 0 of the same "
            f"seed. Flicker: the stylised frames' mean change over the input's (1.0: as much), on clips of {clip['frames']} frames at "
            f"{clip['side']} px made from {len(figures['held_out_photos'])} held-out photos: a pan of {clip['pan_pixels_per_frame']} px a frame, "
            f"and a still with Gaussian noise of sd {clip['camera_noise_sd']:g} (input change: pan {figures['input_frame_change']['pan']:.2f}, "
            f"noise {figures['input_frame_change']['noise']:.2f} of 255). Training: {figures['config']}, noise sd {figures['noise_sd']:g}; "
            f"held-out loss is the perceptual loss alone, without the stability term.*\n")
    step, step_file, step_device = section("stability_step")
    step_note = (f"*A training step alone (`bench/stability_step.py`, {step['styles']} styles, batch {step['batch']}, {step['side']} px, "
                 f"median of {step['rounds']} alternating rounds): {step['step_ms']['off']:.0f} ms without the stability loss, "
                 f"{step['step_ms']['on']:.0f} ms with it, x{step['ratio']:.2f}.*\n")
    return (table(["stability weight", *shown.values()], rows) + "\n" + note + source("flicker", file, device, figures["measured_at"])
            + step_note + source("stability_step", step_file, step_device, step["measured_at"]))


def int8() -> str:
    """bench/int8.py: int8 against fp32 in ONNX Runtime at each width, ms and quality figures over seeds."""
    figures, file, device = section("int8")
    rows = []
    for width in ("1.0", "0.5", "0.25"):
        latency = {row["side"]: row for row in figures["latency"][width]}
        rows.append([width] + [f"{latency[side]['fp32_ms']:,.0f} / {latency[side]['int8_ms']:,.0f} (x{latency[side]['speedup']:.2f})"
                               for side in sorted(latency)]
                    + [spread_cell(figures["worst_relative_change"][width][key], shown="{:.1%}") for key in ("colour_shift", "structure_kept")]
                    + [f"{figures['share_within_tolerance'][width]:.0%}"])
    sides = sorted({row["side"] for rows_ in figures["latency"].values() for row in rows_})
    note = (f"*ms: batch 1, median of {figures['repeats']}, ONNX Runtime with {figures['threads']} threads, fp32 / int8 (speed-up). Change: "
            f"a style's figure in int8 against fp32 on {len(figures['held_out_photos'])} held-out photos, the worst of the styles, mean ± sd "
            f"(min..max) over seeds {', '.join(map(str, figures['seeds']))}; calibrated on {figures['calibration_photos']} content photos of "
            f"{figures['config']}. Within: models whose figures all moved at most {figures['tolerance']:.0%}.*\n")
    return table(["width", *(f"{side}² ms" for side in sides), "colour shift change", "structure kept change", f"within {figures['tolerance']:.0%}"],
                 rows) + "\n" + note + source("int8", file, device, figures["measured_at"])


RENDERERS = {render.__name__: render for render in (two_commands, ci_time, cold_loads, cpu_stylise, serve_many, serve_soak, families,
                                                      family_join, family_draws, family_goals, family_serving, widths, orders,
                                                      batch_stylise, flicker, int8)}


def rendered(text: str) -> str:
    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name not in RENDERERS:
            raise KeyError(f"a page marks a table {name!r} that bench/tables.py cannot write; it writes {', '.join(RENDERERS)}")
        return match.group(1) + RENDERERS[name]() + match.group(4)

    return MARKED.sub(replace, text)


def stale_pages() -> list[str]:
    """The pages whose tables differ from what the results files say, with the tables' names."""
    stale = []
    for page in PAGES:
        text = page.read_text()
        if rendered(text) != text:
            names = [match.group("name") for match in MARKED.finditer(text) if rendered(match.group(0)) != match.group(0)]
            stale.append(f"{page.relative_to(ROOT)} ({', '.join(names)})")
    return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 where a page's table is not what the results say")
    args = parser.parse_args()
    if args.check:
        stale = stale_pages()
        if stale:
            print("tables that differ from bench/results: " + "; ".join(stale) + " (run python bench/tables.py)", file=sys.stderr)
            return 1
        return 0
    for page in PAGES:
        text = page.read_text()
        if rendered(text) != text:
            page.write_text(rendered(text))
            print(f"rewrote the tables of {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
