"""The exact commands the infra scripts and manifests run, as the shell expands them.

* `infra/aws/submit-jobs.sh` is executed by bash with a stand-in `ray` first on PATH that records
  each `ray job submit ... -- <command>` instead of submitting it.
* Each KubeRay RayJob entrypoint is expanded by bash as its job runs it on the head (the
  ConfigMap `read-env` as environment, READ_HOME from the image), with `cd` and `python` standing
  in to record the command.

The same expansion serves the offline manifest checks (with the placeholder site settings) and
the rehearsal's override file (tests/infra/test_rehearsal.py runs the real commands).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
SUBMIT_SCRIPT = INFRA / "aws" / "submit-jobs.sh"
WORKFLOW = INFRA / "kuberay" / "workflow"
IMAGE_HOME = "/opt/read"  # ENV READ_HOME of infra/docker/Dockerfile
AWS_PLACEHOLDER_BUCKET = "read-data-example"

RAY_STAND_IN = textwrap.dedent("""\
    #!{python}
    import json, os, sys
    with open(os.environ["READ_RAY_STAND_IN_LOG"], "a") as log:
        log.write(json.dumps(sys.argv[1:]) + "\\n")
    """)


@dataclass(frozen=True)
class Step:
    """One workflow step: where it comes from and the command its job runs (argv)."""

    platform: str  # "aws" or "kuberay"
    label: str
    argv: tuple[str, ...]  # e.g. ("python", "pipelines/train.py", "--config", ...)
    submit: tuple[str, ...] = ()  # the `ray job submit` options (aws)

    @property
    def script(self) -> str:
        return next(a for a in self.argv if a.startswith("pipelines/") and a.endswith(".py"))

    @property
    def name(self) -> str:
        return Path(self.script).stem

    def option(self, flag: str) -> list[str]:
        """The values after `flag` up to the next flag or key=value."""
        args = list(self.argv)
        if flag not in args:
            return []
        values = []
        for token in args[args.index(flag) + 1:]:
            if token.startswith("--") or ("=" in token and not token.startswith("s3://")):
                break
            values.append(token)
        return values

    def overrides(self) -> dict[str, str]:
        """The key=value config overrides of the command (later ones win)."""
        found = {}
        for token in self.argv:
            key, sep, value = token.partition("=")
            if sep and not token.startswith("-") and "/" not in key:
                found[key] = value
        return found


def kuberay_env() -> dict[str, str]:
    """What a RayJob's shell on the head sees: ConfigMap read-env and the image's READ_HOME."""
    documents = yaml.safe_load_all((INFRA / "kuberay" / "access.yaml").read_text())
    config_map = next(d for d in documents if d and d.get("kind") == "ConfigMap"
                      and d["metadata"]["name"] == "read-env")
    return {"READ_HOME": IMAGE_HOME, **{k: str(v) for k, v in config_map["data"].items()}}


def rayjob_files() -> list[Path]:
    return sorted(WORKFLOW.glob("[0-9][0-9]-*.yaml"))


def rayjob(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def kuberay_submit_script(entrypoint: str, address: str, submission_id: str) -> str:
    """The bash script KubeRay's K8sJobMode submitter runs (`bash -ce <script>`): its
    `ray job submit` with the entrypoint spliced in unquoted (ray-operator's job.go,
    BuildJobSubmitCommand, without the dashboard health loop and the status/logs calls)."""
    return f"ray job submit --address {address} --no-wait --submission-id {submission_id} -- " \
           f"{entrypoint.strip()} ;"


def submitted_entrypoint(entrypoint: str, tmp: Path) -> str:
    """The entrypoint string the job API receives from KubeRay's submitter (a stand-in `ray`
    records the argv; Ray's CLI joins it with shlex.join)."""
    bin_dir = _stand_in_ray(tmp)
    log = tmp / "ray-submissions.jsonl"
    log.unlink(missing_ok=True)
    script = kuberay_submit_script(entrypoint, "http://read-head-svc:8265", "rayjob-test")
    subprocess.run(["bash", "-ce", script], check=True, capture_output=True, timeout=60,
                   env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                        "READ_RAY_STAND_IN_LOG": str(log)})
    [line] = log.read_text().splitlines()
    argv = json.loads(line)
    return shlex.join(argv[argv.index("--") + 1:])


def expand_entrypoint(entrypoint: str, env: dict[str, str], tmp: Path) -> tuple[str, ...]:
    """The command a RayJob runs: the entrypoint through KubeRay's submitter shell and Ray's job
    API, then run by the job's shell on the head with `env` (`cd` ignored, `python` recorded)."""
    job = submitted_entrypoint(entrypoint, tmp)
    script = textwrap.dedent("""\
        cd() { :; }
        python() { printf 'python\\0'; printf '%s\\0' "$@"; }
        export -f cd python
        """) + job
    result = subprocess.run(["bash", "-c", script], env={"PATH": os.environ["PATH"], **env},
                            capture_output=True, check=True, stdin=subprocess.DEVNULL)
    return tuple(part for part in result.stdout.decode().split("\0") if part)


def _stand_in_ray(tmp: Path) -> Path:
    bin_dir = tmp / "stand-in-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    ray = bin_dir / "ray"
    ray.write_text(RAY_STAND_IN.format(python=sys.executable))
    ray.chmod(0o755)
    return bin_dir


def kuberay_steps(env: dict[str, str] | None = None, tmp: Path | None = None) -> list[Step]:
    env = kuberay_env() if env is None else env
    with tempfile.TemporaryDirectory(prefix="kuberay-steps-") as scratch:
        where = tmp or Path(scratch)
        return [Step("kuberay", path.name,
                     expand_entrypoint(rayjob(path)["spec"]["entrypoint"], env, where))
                for path in rayjob_files()]


def aws_steps(env: dict[str, str], tmp: Path) -> list[Step]:
    """Run submit-jobs.sh with a stand-in `ray` that records every submission."""
    bin_dir = _stand_in_ray(tmp)
    log = tmp / "ray-submissions.jsonl"
    log.unlink(missing_ok=True)
    run_env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               "READ_RAY_STAND_IN_LOG": str(log), "HOME": str(tmp), **env}
    subprocess.run(["bash", str(SUBMIT_SCRIPT)], cwd=REPO, env=run_env, check=True,
                   capture_output=True, timeout=120)
    steps = []
    for line in log.read_text().splitlines():
        argv = json.loads(line)
        assert argv[:2] == ["job", "submit"], argv
        cut = argv.index("--")
        steps.append(Step("aws", f"submit-jobs.sh:{Path(argv[cut + 2]).stem}",
                          tuple(argv[cut + 1:]), tuple(argv[2:cut])))
    return steps
