"""Rehearses the AWS path (docs/aws.md, "From an AWS account to live endpoints") as a user walks it: its
bash blocks, in order, from a plain shell with a fresh HOME, against local stand-ins for AWS. The page
lists what runs as written, what is rewritten here and why, and what is skipped: keep the two in step.

    .venv/bin/python .ci/readme_aws_rehearsal.py     # CI runs it after the tests; needs ports 6379, 8265, 8000

The stand-ins: moto's S3 and IAM/EC2 server on 127.0.0.1 (AWS_ENDPOINT_URL), where the bucket is made
in eu-central-1 while cluster.yaml's nodes are in us-west-2; a local HTTP mirror of a small COCO zip and
a random VGG-19 in MatConvNet's format, accepted by factory.download through its test-only release list;
and for `ray up -y cluster.yaml`, cluster.yaml's own head and worker start commands run on this machine:
the head and one node of each worker type, with the type's custom resources (train_node, serve_node).

What it changes in the commands, and nothing else:
- `export BUCKET=my-style-factory` names the rehearsal's bucket: the page's one edit;
- `pip install -e .` and `aws configure` are skipped (CI made the venv; moto takes any credentials);
  `aws s3 mb` / `aws s3 cp --recursive` run through boto3 (no AWS CLI here);
- `ray up`, `ray dashboard`, `ray get-head-ip` and `ray down` act on the local cluster;
- lines ending in `# needs a GPU node` are skipped;
- what CPUs need: training at 32 px for 20 steps on CPUs (shards prepared at 32 px), and the serving
  config with no GPU and one HTTP proxy (the nodes share one machine, so one port 8000).
Then it checks what a user would see: every style published to S3 and answering over HTTP, and the
retrained style trained from step 0 into new weights that the pool serves without a deploy.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "aws.md"
PLAIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUCKET = "rehearsal-style-factory"
BUCKET_REGION = "eu-central-1"  # not cluster.yaml's region: the factory must find the bucket's
CPU_TRAINING = ["--set training.accelerator=cpu", "--set data.image_size=32", f"--set data.source=s3://{BUCKET}/shards/train2014-32",
                "--steps 20", "--set training.batch_size=2", "--set loss.style_size=64", "--set training.checkpoint_every=10",
                "--set training.log_every=5"]
STEPS = 20
TEARDOWN = "ray down -y cluster.yaml"  # docs/aws.md's last step, run as `ray stop` once the checks are done
CREATED_FILES = ("configs/my_coco_s3.yaml", "rocket-starry.jpg")


def readme_commands() -> list[str]:
    """The AWS page's bash blocks as one list of commands (continued lines joined)."""
    section = PAGE.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.DOTALL):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if line.strip():
                commands.append(line.strip())
    return commands


def rehearsed(command: str, serve_config: Path) -> str | None:
    """The command as the rehearsal runs it, or None to skip it."""
    words = command.split()
    if command.endswith("# needs a GPU node") or command.startswith(("pip install", "aws configure")):
        return None
    if command.startswith("export BUCKET="):
        return f"export BUCKET={BUCKET}"
    if "factory.prepare_shards" in command:
        command = command.replace("--image-size 256", "--image-size 32").replace("train2014-256", "train2014-32")
    if "factory/train_all.py" in command:
        command = re.sub(r"(factory/train_all\.py[^#]*?)(\s*#.*)?$", lambda m: f"{m.group(1)} {' '.join(CPU_TRAINING)}", command)
    if words[:1] == ["ray"] and words[1:2] == ["up"]:
        return f"{shlex.quote(sys.executable)} {shlex.quote(__file__)} ray-up"
    if words[:1] == ["ray"] and words[1:2] == ["down"]:
        return None  # run after the checks, which need the cluster (TEARDOWN)
    if words[:1] == ["ray"] and words[1:2] == ["dashboard"]:
        return "true  # the dashboard of the local cluster is on 127.0.0.1:8265 already"
    return command.replace("configs/serve_aws.yaml", str(serve_config))


def shell_script(serve_config: Path) -> str:
    prelude = [
        "set -euo pipefail",
        # ray get-head-ip and aws act on the stand-ins; every other ray command is Ray's own.
        'ray() { if [ "$1" = get-head-ip ]; then echo 127.0.0.1; else command ray "$@"; fi; }',
        f"aws() {{ {shlex.quote(sys.executable)} {shlex.quote(__file__)} aws \"$@\"; }}",
    ]
    lines = []
    for command in readme_commands():
        run = rehearsed(command, serve_config)
        lines.append(f"echo {shlex.quote('$ ' + command)}")
        if run is not None:
            lines.append(run)
    return "\n".join(prelude + lines) + "\n"


# --- the stand-ins -----------------------------------------------------------------------------


def aws_standin(arguments: list[str]) -> int:
    """`aws s3 mb s3://B` (in AWS_DEFAULT_REGION) and `aws s3 cp --recursive DIR s3://B/PREFIX/`."""
    import boto3

    client = boto3.client("s3")
    if arguments[:2] == ["s3", "mb"]:
        bucket = arguments[2].removeprefix("s3://").strip("/")
        client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": os.environ["AWS_DEFAULT_REGION"]})
        print(f"make_bucket: {bucket}")
        return 0
    if arguments[:2] == ["s3", "cp"] and "--recursive" in arguments:
        source, dest = [argument for argument in arguments[2:] if argument != "--recursive"]
        bucket, _, prefix = dest.removeprefix("s3://").partition("/")
        for path in sorted(Path(source).rglob("*")):
            if path.is_file():
                key = f"{prefix.rstrip('/')}/{path.relative_to(source).as_posix()}".lstrip("/")
                client.upload_file(str(path), bucket, key)
                print(f"upload: {path} to s3://{bucket}/{key}")
        return 0
    print(f"the rehearsal's aws stand-in does not do: aws {' '.join(arguments)}", file=sys.stderr)
    return 2


def ray_up() -> int:
    """cluster.yaml's head and worker start commands, one node per node type, on this machine."""
    import yaml

    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    token = Path.home() / ".ray" / "auth_token"
    if not token.is_file():  # cluster.yaml's file_mounts copies it to every node: ray up fails without it
        print(f"cluster.yaml mounts {token}, which does not exist: docs/aws.md must create it before ray up", file=sys.stderr)
        return 1
    # The nodes run where cluster.yaml puts them: their region is the provider's, not the bucket's.
    env = {**os.environ, "AWS_DEFAULT_REGION": cluster["provider"]["region"]}

    def start(commands: list[str], node_type: dict, cpus: int) -> None:
        custom = {name: value for name, value in node_type.get("resources", {}).items() if name not in ("CPU", "GPU")}
        for command in commands:
            command = command.replace("$RAY_HEAD_IP", "127.0.0.1").replace("--autoscaling-config=~/ray_bootstrap_config.yaml", "")
            if command.strip() == "ray stop" and node_type is not types[cluster["head_node_type"]]:
                continue  # on its own machine a node stops its own Ray first; here that would be the head's
            if "ray start" in command:
                if "--head" not in command:  # nodes on one machine cannot share the object manager's port
                    command = command.replace("--object-manager-port=8076", "")
                command += f" --node-ip-address=127.0.0.1 --num-cpus={cpus} --resources={shlex.quote(json.dumps(custom))}"
            subprocess.run(["bash", "-c", command], env=env, check=True)

    types = cluster["available_node_types"]
    start(cluster["head_start_ray_commands"], types[cluster["head_node_type"]], 2)
    for name, node_type in types.items():
        if name != cluster["head_node_type"]:
            start(cluster["worker_start_ray_commands"], node_type, 2)
    return 0


class Mirror:
    """A local HTTP mirror of factory.download's files (STYLE_FACTORY_MIRROR)."""

    def __init__(self, folder: Path):
        handler = lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(folder))  # noqa: E731
        http.server.SimpleHTTPRequestHandler.log_message = lambda *args: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def coco_standin(count: int = 48) -> bytes:
    """A train2014.zip of `count` JPEGs cut from the bundled sample photos, as COCO names them."""
    import numpy as np
    from PIL import Image

    photos = [Image.open(path).convert("RGB") for path in sorted((ROOT / "data" / "samples" / "content").iterdir())]
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(count):
            photo = photos[index % len(photos)]
            side = int(rng.integers(96, min(photo.size)))
            left, top = (int(rng.integers(0, extent - side + 1)) for extent in photo.size)
            image = photo.crop((left, top, left + side, top + side)).resize((80, 64))
            jpeg = io.BytesIO()
            image.save(jpeg, "JPEG", quality=90)
            archive.writestr(zipfile.ZipInfo(f"train2014/COCO_train2014_{index:012d}.jpg", date_time=(2014, 1, 1, 0, 0, 0)), jpeg.getvalue())
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto(env: dict) -> subprocess.Popen:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            if time.time() > deadline:
                raise RuntimeError("moto's server did not start")
            time.sleep(0.2)


def cpu_serving_config(folder: Path) -> Path:
    """configs/serve_aws.yaml as this machine can run it: no GPU, one HTTP proxy (the nodes share one machine)."""
    import yaml

    config = yaml.safe_load((ROOT / "configs" / "serve_aws.yaml").read_text())
    config["defaults"].update(num_gpus=0, num_cpus=1, max_replicas=1)
    config["http"]["proxy_location"] = "HeadOnly"
    path = folder / "serve_aws_cpu.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


# --- the checks ------------------------------------------------------------------------------------


def check_what_a_user_sees(env: dict) -> list[str]:
    import boto3
    import requests

    os.environ.update({key: env[key] for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
    sys.path.insert(0, str(ROOT))
    from factory import registry

    problems = []
    client = boto3.client("s3")
    location = client.get_bucket_location(Bucket=BUCKET)["LocationConstraint"]
    if location != BUCKET_REGION:
        problems.append(f"the bucket is in {location}, not {BUCKET_REGION}: the rehearsal did not test another region")
    registry_uri = f"s3://{BUCKET}/registry"
    styles = registry.list_styles(registry_uri)
    if styles != ["shipwreck", "starry_night", "the_scream", "udnie"]:
        problems.append(f"the registry lists {styles}, not the config's four styles")
    if not (ROOT / "rocket-starry.jpg").is_file() or not (ROOT / "rocket-starry.jpg").read_bytes().startswith(b"\xff\xd8"):
        problems.append("docs/aws.md's curl did not get a JPEG back")
    versions = sorted(registry.storage.list_subfolders(f"{registry_uri}/starry_night/versions"))
    if len(versions) != 2:
        return problems + [f"starry_night has versions {versions}: the retrain did not publish a second one"]
    old, new = (registry.read_metadata(registry_uri, "starry_night", version) for version in versions)
    if registry.current_version(registry_uri, "starry_night") != new["version"]:
        problems.append("current.json does not point at the retrained version")
    if new["steps"] != STEPS or new["resumed_at_steps"] != []:
        problems.append(f"the retrain did not train from step 0 to {STEPS}: steps {new['steps']}, resumed at {new['resumed_at_steps']}")
    if new["model_sha256"] == old["model_sha256"]:
        problems.append("the retrain published the old weights again (same model.pt sha256)")
    if "relative_change" not in new.get("int8", {}):  # quantised and judged, in a job run as `python factory/train_all.py`
        problems.append(f"the retrain's int8 copy was not made and checked: {new.get('int8')}")
    photo = (ROOT / "data" / "samples" / "held_out" / "rocket.jpg").read_bytes()
    deadline, served = time.time() + 60, None
    while time.time() < deadline:
        response = requests.post("http://127.0.0.1:8000/styles/starry_night?max_side=64", data=photo, timeout=60)
        served = response.headers.get("x-model-version")
        if response.status_code == 200 and served == new["version"]:
            break
        time.sleep(2)
    else:
        problems.append(f"the pool still serves starry_night version {served}, not the retrained {new['version']}")
    print(f"starry_night: version {old['version']} (sha256 {old['model_sha256'][:12]}) retrained into {new['version']} "
          f"(sha256 {new['model_sha256'][:12]}, {new['steps']} steps from 0), served over HTTP", flush=True)
    return problems + check_the_catalogue(client)


def check_the_catalogue(client) -> list[str]:
    """The bulk job's results: every held-out photo in both styles at its size, and a complete report."""
    from PIL import Image

    problems = []
    held_out = sorted((ROOT / "data" / "samples" / "held_out").iterdir())
    for style in ("starry_night", "udnie"):
        for photo in held_out:
            key = f"stylised/{style}/{photo.name}"
            try:
                result = Image.open(io.BytesIO(client.get_object(Bucket=BUCKET, Key=key)["Body"].read()))
            except client.exceptions.NoSuchKey:
                problems.append(f"the bulk job wrote no s3://{BUCKET}/{key}")
                continue
            if result.size != Image.open(photo).size:
                problems.append(f"s3://{BUCKET}/{key} is {result.size}, not its photo's {Image.open(photo).size}")
    report = json.loads(client.get_object(Bucket=BUCKET, Key="stylised/_stylise_report.json")["Body"].read())
    if report["status"] != "complete" or report["outputs_written"] != 2 * len(held_out):
        problems.append(f"the bulk job's report: {report['status']}, {report['outputs_written']} written of {2 * len(held_out)}")
    print(f"the catalogue: {report['outputs_written']} results in two styles, report {report['status']}", flush=True)
    return problems


def main() -> int:
    if sys.argv[1:2] == ["aws"]:
        return aws_standin(sys.argv[2:])
    if sys.argv[1:2] == ["ray-up"]:
        return ray_up()
    sys.path.insert(0, str(ROOT / "tests"))
    import vgg_files

    with tempfile.TemporaryDirectory(prefix="aws-rehearsal-") as temp:
        temp = Path(temp)
        (temp / "home").mkdir()
        mirror_folder = temp / "mirror"
        mirror_folder.mkdir()
        (mirror_folder / "train2014.zip").write_bytes(coco_standin())
        vgg_files.write_mat_new(mirror_folder / "imagenet-vgg-verydeep-19.mat", vgg_files.matconvnet_convs())
        releases = {name: {hashlib.md5((mirror_folder / name).read_bytes()).hexdigest(): "the rehearsal's stand-in"}
                    for name in ("train2014.zip", "imagenet-vgg-verydeep-19.mat")}
        (temp / "releases.json").write_text(json.dumps(releases))
        mirror = Mirror(mirror_folder)
        env = {"HOME": str(temp / "home"), "PATH": f"{ROOT / '.venv' / 'bin'}:{PLAIN_PATH}", "LANG": "C.UTF-8", "TERM": "dumb",
               "AWS_ACCESS_KEY_ID": "rehearsal", "AWS_SECRET_ACCESS_KEY": "rehearsal", "AWS_DEFAULT_REGION": BUCKET_REGION,
               "STYLE_FACTORY_MIRROR": mirror.url, "STYLE_FACTORY_TEST_ONLY_RELEASES": str(temp / "releases.json")}
        moto = start_moto(env)
        script = shell_script(cpu_serving_config(temp))
        print(f"running docs/aws.md's steps:\n{script}", flush=True)
        try:
            done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, timeout=1800)
            problems = [f"docs/aws.md's steps failed with exit code {done.returncode}"] if done.returncode else check_what_a_user_sees(env)
            if TEARDOWN not in readme_commands():
                problems.append(f"docs/aws.md's steps no longer end with `{TEARDOWN}`")
        finally:
            subprocess.run([str(ROOT / ".venv" / "bin" / "ray"), "stop", "--force"], env=env, capture_output=True)
            moto.terminate()
            for name in CREATED_FILES:
                (ROOT / name).unlink(missing_ok=True)
            shutil.rmtree("/tmp/style-factory-downloads", ignore_errors=True)  # docs/aws.md's download cache
            shutil.rmtree(temp / "home", ignore_errors=True)
    if problems:
        print("docs/aws.md's AWS path, rehearsed:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print("docs/aws.md's AWS path ran as written against the local stand-ins, and every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
