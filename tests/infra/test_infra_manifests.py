"""The deployment files in infra/ are checked offline against the schemas their tools use.

- Ray cluster-launcher YAMLs: Ray's own config preparation and `ray-schema.json` validation, and
  each node type's EC2 `node_config` against botocore's RunInstances request model.
- KubeRay RayCluster / RayJob / RayService: the vendored KubeRay CRD schema (infra/kuberay/schemas/); every
  pod template and every core Kubernetes object: the `kubernetes-validate` schemas (strict).
- Entry points named by the manifests exist and accept the flags and config overrides given.
- The MLflow server command parses with MLflow's own CLI.
- Ray Serve configs (`infra/serve/`, RayService `serveConfigV2`): Serve's own schema, no unknown
  keys, and the application each names builds from its args.

Nothing here needs a cloud account or a cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import io
import json
import re
import runpy
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
KUBERAY_SCHEMA = INFRA / "kuberay" / "schemas" / "kuberay-v1.schema.yaml"
KUBERNETES_VERSION = "1.33"  # oldest minor the manifests promise to work on (EKS standard support)
# Kubernetes resource.Quantity, as the API server (and the KubeRay CRD) define it.
QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")


# ---------------------------------------------------------------------------------------------
# Loading


def _yaml_files() -> list[Path]:
    files = sorted(p for p in INFRA.rglob("*") if p.suffix in {".yaml", ".yml"})
    assert files, "infra/ holds no YAML files"
    return files


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _cluster_launcher_files() -> list[Path]:
    return sorted(p for p in (INFRA / "aws").glob("*.yaml") if "provider" in _documents(p)[0])


def _kubernetes_documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in _yaml_files():
        if path.parent.name == "schemas" or path.name == "docker-compose.yaml":
            continue
        for doc in _documents(path):
            if "apiVersion" in doc and "kind" in doc:
                docs.append((f"{path.relative_to(REPO)}:{doc['kind']}/{doc['metadata']['name']}",
                             doc))
    return docs


def _ray_resources() -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, doc in _kubernetes_documents()
            if doc["apiVersion"].startswith("ray.io/")]


def _core_resources() -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, doc in _kubernetes_documents()
            if not doc["apiVersion"].startswith("ray.io/")]


def _cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "RayService":
        return doc["spec"]["rayClusterConfig"]
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _pod_templates(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every pod template in a RayCluster / RayJob, named by where it sits."""
    spec = _cluster_spec(doc)
    templates = [("head", spec["headGroupSpec"]["template"])]
    templates += [(f"worker {group['groupName']}", group["template"])
                  for group in spec.get("workerGroupSpecs", [])]
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        templates.append(("submitter", doc["spec"]["submitterPodTemplate"]))
    return templates


@functools.cache
def _kuberay_validator() -> jsonschema.Draft202012Validator:
    schema = yaml.safe_load(KUBERAY_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _kuberay_errors(doc: dict[str, Any]) -> list[str]:
    root = _kuberay_validator().schema
    validator = jsonschema.Draft202012Validator({**root, "$ref": f"#/$defs/{doc['kind']}"})
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def _validate_pod_template(template: dict[str, Any]) -> None:
    import kubernetes_validate

    wrapper = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"},
               "template": template}
    kubernetes_validate.validate(wrapper, KUBERNETES_VERSION, strict=True)


# ---------------------------------------------------------------------------------------------
# Every file parses


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = _documents(path)
    assert docs, f"{path} holds no document"
    assert all(isinstance(doc, dict) for doc in docs)


def test_no_credentials_in_infra_files() -> None:
    """Keys come from instance profiles, IRSA roles and Secrets created at deploy time."""
    for path in sorted(p for p in INFRA.rglob("*") if p.is_file()):
        text = path.read_text(errors="replace")
        assert not AWS_KEY_ID.search(text), f"{path} contains an AWS access key id"
        assert not re.search(r"aws_(access_key_id|secret_access_key)\s*[:=]", text, re.I), path
    kinds = {doc["kind"] for _, doc in _kubernetes_documents()}
    assert "Secret" not in kinds, "Secrets are created with kubectl, never committed"


# ---------------------------------------------------------------------------------------------
# Ray cluster launcher (AWS)


@pytest.mark.parametrize("path", _cluster_launcher_files(), ids=lambda p: p.name)
def test_cluster_launcher_yaml_validates_against_ray_schema(path: Path) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _documents(path)[0]
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)  # ray/autoscaler/ray-schema.json + Ray's own consistency checks

    # The schema accepts a config that is valid but unusable: check what this project relies on.
    node_types = prepared["available_node_types"]
    head = node_types[prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    gpu_counts = sorted(t["resources"].get("GPU", 0) for t in node_types.values())
    assert 8 in gpu_counts and 1 in gpu_counts, "an 8-GPU and a single-GPU worker type"
    for name, node_type in node_types.items():
        if node_type is head:
            continue
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= prepared["max_workers"], name
        assert "IamInstanceProfile" in node_type["node_config"], f"{name}: S3 through a profile"
    assert "IamInstanceProfile" in head["node_config"]
    image = prepared["docker"]["image"]
    assert re.search(r":\d+\.\d+\.\d+$", image), f"image {image} must carry a pinned version tag"


def test_cluster_launcher_yaml_is_rejected_by_ray_when_broken() -> None:
    """The Ray validation above is not vacuous: a wrong type and an unknown key are caught."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _documents(_cluster_launcher_files()[0])[0]
    bad = copy.deepcopy(raw)
    bad["max_workers"] = "eight"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))
    bad = copy.deepcopy(raw)
    bad["idle_timeout_minute"] = 5
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


@pytest.mark.parametrize("path", _cluster_launcher_files(), ids=lambda p: p.name)
def test_node_configs_are_valid_ec2_run_instances_requests(path: Path) -> None:
    """Ray passes `node_config` to EC2 RunInstances: check it against botocore's request model."""
    import botocore.session
    from botocore.validate import ParamValidator

    operation = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances")
    instance_types = set(operation.input_shape.members["InstanceType"].enum)
    for name, node_type in _documents(path)[0]["available_node_types"].items():
        request = {**node_type["node_config"], "MinCount": 1, "MaxCount": 1}
        # Ray's own key, resolved by the launcher to one SubnetId per RunInstances call.
        subnets = request.pop("SubnetIds", None)
        if subnets:
            request["SubnetId"] = subnets[0]
        report = ParamValidator().validate(request, operation.input_shape)
        assert not report.has_errors(), f"{name}: {report.generate_report()}"
        assert node_type["node_config"]["InstanceType"] in instance_types, name


# ---------------------------------------------------------------------------------------------
# KubeRay and core Kubernetes objects


def test_kuberay_manifests_exist() -> None:
    kinds = sorted(doc["kind"] for _, doc in _ray_resources())
    assert "RayCluster" in kinds and kinds.count("RayJob") >= 3


@pytest.mark.parametrize("name,doc", _ray_resources(), ids=[n for n, _ in _ray_resources()])
def test_kuberay_resource_validates_against_crd_schema(name: str, doc: dict[str, Any]) -> None:
    assert _kuberay_errors(doc) == [], name


def test_kuberay_schema_rejects_broken_resources() -> None:
    """The vendored schema is not vacuous: a misspelt field, a wrong type, a missing template."""
    job = next(doc for _, doc in _ray_resources()
               if doc["kind"] == "RayJob" and doc["spec"]["rayClusterSpec"]["workerGroupSpecs"])
    misspelt = copy.deepcopy(job)
    misspelt["spec"]["shutdownAfterJobFinish"] = misspelt["spec"].pop("shutdownAfterJobFinishes")
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["activeDeadlineSeconds"] = "3 days"
    no_template = copy.deepcopy(job)
    del no_template["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]
    for broken in (misspelt, wrong_type, no_template):
        assert _kuberay_errors(broken), "the schema accepted a broken RayJob"


@pytest.mark.parametrize("name,doc", _ray_resources(), ids=[n for n, _ in _ray_resources()])
def test_pod_templates_validate_against_kubernetes_schema(name: str, doc: dict[str, Any]) -> None:
    for where, template in _pod_templates(doc):
        try:
            _validate_pod_template(template)
        except Exception as error:  # any failure: report which template
            pytest.fail(f"{name} {where}: {getattr(error, 'message', error)}")


def test_kubernetes_schema_rejects_a_broken_pod_template() -> None:
    _, doc = _ray_resources()[0]
    template = copy.deepcopy(_pod_templates(doc)[0][1])
    template["spec"]["containers"][0]["resourcez"] = {}
    with pytest.raises(Exception, match="resourcez"):
        _validate_pod_template(template)


@pytest.mark.parametrize("name,doc", _core_resources(), ids=[n for n, _ in _core_resources()])
def test_core_kubernetes_objects_validate(name: str, doc: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def _containers(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(where, template, container) for where, template in _pod_templates(doc)
            for container in template["spec"]["containers"]]


@pytest.mark.parametrize("name,doc", _ray_resources(), ids=[n for n, _ in _ray_resources()])
def test_ray_pods_use_the_pinned_image_identity_and_shared_settings(name: str,
                                                                    doc: dict[str, Any]) -> None:
    import ray

    spec = _cluster_spec(doc)
    assert spec["rayVersion"] == ray.__version__, "the image's Ray must match the pinned Ray"
    for where, template, container in _containers(doc):
        image = container["image"]
        assert re.search(r":\d+\.\d+\.\d+$", image), f"{name} {where}: unpinned image {image}"
        assert template["spec"]["serviceAccountName"] == "read-ray", f"{name} {where}: no IRSA"
        sources = [s["configMapRef"]["name"] for s in container.get("envFrom", [])]
        assert "read-env" in sources, f"{name} {where}: MLflow URI comes from ConfigMap read-env"
        for entry in container.get("env", []):
            secret = entry.get("valueFrom", {}).get("secretKeyRef")
            assert "value" not in entry or not entry["name"].endswith(("PASSWORD", "TOKEN")), entry
            if secret:
                assert secret["name"] == "mlflow-auth"


@pytest.mark.parametrize("name,doc", _ray_resources(), ids=[n for n, _ in _ray_resources()])
def test_resource_requests_are_quantities_and_gpus_are_whole(name: str, doc: dict[str, Any]) -> None:
    for where, _, container in _containers(doc):
        resources = container["resources"]
        for kind in ("requests", "limits"):
            for resource, value in resources.get(kind, {}).items():
                assert QUANTITY.match(str(value)), f"{name} {where}: {resource}={value!r}"
        for resource, value in resources.get("limits", {}).items():
            if "/" in resource:
                # Kubernetes requires requests == limits for extended resources (GPUs, EFA).
                assert resources["requests"][resource] == value, f"{name} {where}: {resource}"
                assert str(value).isdigit() and int(value) >= 1
    for group in _cluster_spec(doc).get("workerGroupSpecs", []):
        if group["groupName"].startswith("gpu"):
            container = group["template"]["spec"]["containers"][0]
            assert "nvidia.com/gpu" in container["resources"]["limits"], group["groupName"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


@pytest.mark.parametrize("name,doc", [(n, d) for n, d in _ray_resources() if d["kind"] == "RayJob"],
                         ids=[n for n, d in _ray_resources() if d["kind"] == "RayJob"])
def test_rayjobs_clean_up_and_have_deadlines(name: str, doc: dict[str, Any]) -> None:
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["activeDeadlineSeconds"] > 0
    assert 0 <= spec["ttlSecondsAfterFinished"] <= 3600


def test_workflow_script_runs_every_step_in_order() -> None:
    """run-workflow.sh applies the numbered RayJobs in order, by the names they declare."""
    folder = INFRA / "kuberay" / "workflow"
    steps = sorted(folder.glob("[0-9][0-9]-*.yaml"))
    assert len(steps) >= 3
    script = (folder / "run-workflow.sh").read_text()
    positions = [script.find(step.name) for step in steps]
    assert all(p >= 0 for p in positions), "run-workflow.sh must name every step file"
    assert positions == sorted(positions), "steps must run in their numbered order"
    names = [_documents(step)[0]["metadata"]["name"] for step in steps]
    assert len(set(names)) == len(names)


# ---------------------------------------------------------------------------------------------
# Entry points named by the manifests


@functools.cache
def _entrypoint_commands() -> list[tuple[str, list[str]]]:
    """Each `python pipelines/<x>.py ...` command the infra runs, as the shell expands it: the AWS
    script executed with a stand-in `ray` and the placeholder bucket, the RayJob entrypoints
    expanded with ConfigMap read-env (tests/infra_commands.py)."""
    import tempfile

    import infra_commands

    with tempfile.TemporaryDirectory(prefix="infra-commands-") as tmp:
        aws = infra_commands.aws_steps({"READ_BUCKET": infra_commands.AWS_PLACEHOLDER_BUCKET},
                                       Path(tmp))
    steps = [*infra_commands.kuberay_steps(), *aws]
    assert steps, "no entry point found in infra/"
    return [(step.label, list(step.argv[1:])) for step in steps]


IMAGE_READ_HOME = "/opt/read"


def _in_repo(path: str) -> Path:
    """Paths in the commands are relative to the checkout (AWS: the uploaded working dir;
    KubeRay: the image's copy of it, READ_HOME=/opt/read in infra/docker/Dockerfile)."""
    return REPO / path.removeprefix(IMAGE_READ_HOME + "/")


class _Parsed(BaseException):
    """Raised instead of running the job once the script's own parser accepted the arguments."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__()
        self.namespace = namespace


def _parse_with_script(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """Run the script as `python <script> <args>` until its parser returns, then stop it.

    The script's real parser judges the arguments (flag names, choices, nargs, positionals); a
    rejection exits with argparse's message, which becomes the test failure.
    """
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> Any:
        raise _Parsed(original(self, args, namespace))

    script = _in_repo(argv[0])
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    monkeypatch.setattr(sys, "argv", [str(script), *argv[1:]])
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            runpy.run_path(str(script), run_name="__main__")
    except _Parsed as parsed:
        return parsed.namespace
    except SystemExit as stop:
        pytest.fail(f"{script.name} rejected {argv[1:]} ({stop.code}): {stderr.getvalue()[-1500:]}")
    pytest.fail(f"{script.name} finished without parsing its arguments")


def _check_overrides(namespace: argparse.Namespace) -> None:
    """Config overrides must name real keys with valid values in the config the command names."""
    from pipelines.config import load_job_config

    config = getattr(namespace, "config", None)
    if config:
        load_job_config(_in_repo(config), list(getattr(namespace, "overrides", None) or []))


@pytest.mark.parametrize("label,argv", _entrypoint_commands(), ids=[c[0] for c in _entrypoint_commands()])
def test_entrypoint_exists_and_accepts_its_arguments(label: str, argv: list[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    script = _in_repo(argv[0])
    assert script.is_file(), f"{label}: {argv[0]} does not exist in the repository"
    namespace = _parse_with_script(argv, monkeypatch)
    if getattr(namespace, "config", None):
        assert _in_repo(namespace.config).is_file(), f"{label}: no config {namespace.config}"
    _check_overrides(namespace)


def test_entrypoint_check_catches_unknown_flags_and_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from read_model.config import ConfigError

    _, argv = next(c for c in _entrypoint_commands() if c[1][0].endswith("train.py"))
    with pytest.raises(pytest.fail.Exception, match="no-such-flag"):
        _parse_with_script([*argv, "--no-such-flag"], monkeypatch)
    namespace = _parse_with_script([*argv, "train.no_such_key=1"], monkeypatch)
    with pytest.raises(ConfigError, match="no_such_key"):
        _check_overrides(namespace)


# ---------------------------------------------------------------------------------------------
# MLflow server


def _mlflow_server_commands() -> dict[str, list[str]]:
    deployment = next(doc for doc in _documents(INFRA / "mlflow" / "k8s.yaml")
                      if doc["kind"] == "Deployment")
    compose = _documents(INFRA / "mlflow" / "docker-compose.yaml")[0]
    return {"k8s": [str(a) for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]],
            "compose": [str(a) for a in compose["services"]["mlflow"]["command"]]}


@pytest.mark.parametrize("where", ["k8s", "compose"])
def test_mlflow_server_command_parses_with_mlflow_cli(where: str) -> None:
    from mlflow.cli import cli

    argv = _mlflow_server_commands()[where]
    assert argv[0] == "server"
    context = cli.commands["server"].make_context("server", argv[1:])  # click parsing + callbacks
    params = context.params
    assert params["backend_store_uri"].startswith(("postgresql://", "$(")), "PostgreSQL backend"
    assert params["artifacts_destination"].startswith("s3://"), "S3 artifact store"
    assert params["host"] == "0.0.0.0" and params["port"] == 5000


def test_mlflow_server_command_is_the_same_in_both_deployments() -> None:
    commands = _mlflow_server_commands()
    flags = {where: sorted(t for t in argv if t.startswith("--")) for where, argv in commands.items()}
    assert flags["k8s"] == flags["compose"]
    destination = {where: argv[argv.index("--artifacts-destination") + 1]
                   for where, argv in commands.items()}
    assert destination["k8s"] == destination["compose"]


def test_clients_point_at_the_deployed_mlflow_service() -> None:
    """The ConfigMap Ray pods read names the Service the MLflow Deployment exposes."""
    config_map = next(doc for _, doc in _core_resources()
                      if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "read-env")
    service = next(doc for doc in _documents(INFRA / "mlflow" / "k8s.yaml")
                   if doc["kind"] == "Service" and doc["metadata"]["name"] == "mlflow")
    uri = config_map["data"]["MLFLOW_TRACKING_URI"]
    host = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert uri == f"http://{host}:{service['spec']['ports'][0]['port']}"
    allowed = _mlflow_server_commands()["k8s"]
    allowed_hosts = allowed[allowed.index("--allowed-hosts") + 1].split(",")
    assert f"{host}:{service['spec']['ports'][0]['port']}" in allowed_hosts


def test_iam_policy_documents_are_json() -> None:
    for path in sorted(INFRA.rglob("*.json")):
        if "schemas" in path.parts:
            continue
        document = json.loads(path.read_text())
        assert document.get("Version") == "2012-10-17", path


# ---------------------------------------------------------------------------------------------
# Serving: `serve deploy` configs and the RayService's serveConfigV2


def _serve_configs() -> list[tuple[str, dict[str, Any]]]:
    configs = [(str(p.relative_to(REPO)), _documents(p)[0])
               for p in sorted((INFRA / "serve").glob("*.yaml"))]
    configs += [(name, yaml.safe_load(doc["spec"]["serveConfigV2"]))
                for name, doc in _ray_resources() if doc["kind"] == "RayService"]
    return configs


def _unknown_serve_keys(model: Any, data: Any, where: str = "") -> list[str]:
    """Keys Serve's schema does not define (Serve ignores them silently; kubectl-style, we don't)."""
    import typing

    from pydantic import BaseModel

    if not isinstance(data, dict):
        return []
    unknown = [f"{where}{key}" for key in data if key not in model.model_fields]
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is None:
            continue
        for inner in (field.annotation, *typing.get_args(field.annotation)):
            for candidate in (inner, *typing.get_args(inner)):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    items = value if isinstance(value, list) else [value]
                    for index, item in enumerate(items):
                        unknown += _unknown_serve_keys(candidate, item, f"{where}{key}[{index}].")
    return sorted(set(unknown))


def _serve_errors(config: dict[str, Any]) -> list[str]:
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as error:
        return [str(error)]
    return [f"unknown key {key}" for key in _unknown_serve_keys(ServeDeploySchema, config)]


def test_serve_configs_exist() -> None:
    names = [name for name, _ in _serve_configs()]
    assert any(n.startswith("infra/serve/") for n in names), "a `serve deploy` config"
    assert any("RayService" in n for n in names), "a KubeRay RayService"


@pytest.mark.parametrize("name,config", _serve_configs(), ids=[n for n, _ in _serve_configs()])
def test_serve_config_validates_against_ray_serve_schema(name: str, config: dict[str, Any]) -> None:
    assert _serve_errors(config) == [], name


def test_serve_schema_check_rejects_broken_configs() -> None:
    _, config = _serve_configs()[0]
    misspelt_app = copy.deepcopy(config)
    misspelt_app["applications"][0]["route_prefx"] = "/"
    wrong_type = copy.deepcopy(config)
    wrong_type["http_options"]["port"] = "eighty"
    misspelt_top = copy.deepcopy(config)
    misspelt_top["http_option"] = {}
    for broken in (misspelt_app, wrong_type, misspelt_top):
        assert _serve_errors(broken), "the Serve config check accepted a broken config"


@pytest.mark.parametrize("name,config", _serve_configs(), ids=[n for n, _ in _serve_configs()])
def test_serve_applications_build_from_their_args(name: str, config: dict[str, Any]) -> None:
    """The import path exists and its builder accepts the args (config path and overrides)."""
    import importlib

    from ray.serve import Application

    for app in config["applications"]:
        module, attribute = app["import_path"].split(":")
        builder = getattr(importlib.import_module(module), attribute)
        args = dict(app.get("args") or {})
        assert _in_repo(args["config"]).is_file(), f"{name}: no config {args['config']}"
        args["config"] = str(_in_repo(args["config"]))
        args.setdefault("tracking_uri", "http://mlflow.invalid:5000")  # building contacts nothing
        assert isinstance(builder(args), Application), name


@pytest.mark.parametrize("name,doc", [(n, d) for n, d in _ray_resources() if d["kind"] == "RayService"],
                         ids=[n for n, d in _ray_resources() if d["kind"] == "RayService"])
def test_rayservice_cluster_fits_its_model_replicas(name: str, doc: dict[str, Any]) -> None:
    """GPU pods can hold every model replica the autoscaler may ask for; the port is exposed."""
    from pipelines.config import load_job_config

    serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    [app] = serve_config["applications"]
    job = load_job_config(_in_repo(app["args"]["config"]), app["args"].get("overrides") or [])
    settings = job.serve
    assert settings.num_gpus_per_replica == 1, "one GPU per model replica"
    spec = _cluster_spec(doc)
    gpu_slots = 0
    for group in spec["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        gpus = int(limits.get("nvidia.com/gpu", 0))
        if gpus:
            assert float(limits["cpu"]) >= settings.num_cpus_per_replica, group["groupName"]
            gpu_slots += group["maxReplicas"] * gpus
            assert group["minReplicas"] * gpus >= settings.min_replicas, "min replicas placeable"
    assert gpu_slots >= settings.max_replicas * settings.num_gpus_per_replica
    port = serve_config["http_options"]["port"]
    assert serve_config["http_options"]["host"] == "0.0.0.0"
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert port in [p["containerPort"] for p in head["ports"]]


# ---------------------------------------------------------------------------------------------
# What a platform engineer checks first: AMI and driver, EFA, placement, zones, access, auth

EFA_CARDS = {"p5.48xlarge": 32, "p4d.24xlarge": 4}  # EC2 docs: network cards, one EFA each
DLAMI_PARAMETER = "resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-"


def _aws_cluster() -> dict[str, Any]:
    return _documents(INFRA / "aws" / "read-cluster.yaml")[0]


def test_aws_nodes_run_an_ami_whose_driver_supports_the_pinned_cuda_build() -> None:
    import tomllib

    import torch

    cluster = _aws_cluster()
    for name, node_type in cluster["available_node_types"].items():
        image = node_type["node_config"].get("ImageId", "")
        assert image.startswith((DLAMI_PARAMETER, "ami-")), f"{name}: ImageId {image!r}"
    # The comment that names the driver the AMI must carry names the torch build pyproject pins.
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_pin = next(p for p in pins if p.startswith("torch==")).split("==")[1]
    text = (INFRA / "aws" / "read-cluster.yaml").read_text()
    cuda = torch.version.cuda.replace(".", "")
    assert f"torch {torch_pin}+cu{cuda}" in text, "re-check the AMI's driver when torch changes"
    assert "driver >= 580" in text and torch.version.cuda.startswith("13.")
    assert any("torch.cuda.is_available()" in c for c in cluster["worker_setup_commands"])


def test_aws_gpu_training_nodes_use_efa_in_a_cluster_placement_group_in_one_zone() -> None:
    cluster = _aws_cluster()
    assert "," not in cluster["provider"]["availability_zone"], "one availability zone"
    assert cluster["provider"]["use_internal_ips"] is True
    subnets = set()
    for name, node_type in cluster["available_node_types"].items():
        config = node_type["node_config"]
        interfaces = config.get("NetworkInterfaces", [])
        subnets |= {i["SubnetId"] for i in interfaces} | set(config.get("SubnetIds", []))
        cards = EFA_CARDS.get(config["InstanceType"])
        if cards is None:
            assert not interfaces, f"{name}: EFA only on {sorted(EFA_CARDS)}"
            continue
        assert config["Placement"]["GroupName"], f"{name}: cluster placement group"
        primary = [i for i in interfaces if i["InterfaceType"] == "interface"]
        efa = [i for i in interfaces if i["InterfaceType"] == "efa-only"]
        assert [(i["NetworkCardIndex"], i["DeviceIndex"]) for i in primary] == [(0, 0)], name
        assert sorted(i["NetworkCardIndex"] for i in efa) == list(range(cards)), name
        options = node_type["docker"]["worker_run_options"]
        assert "--device /dev/infiniband" in options and "--env FI_PROVIDER=efa" in options
    assert len(subnets) == 1, f"every node in one subnet (one zone): {subnets}"


def test_aws_ray_requires_a_token_and_keeps_the_dashboard_on_the_head() -> None:
    cluster = _aws_cluster()
    assert "--env RAY_AUTH_MODE=token" in cluster["docker"]["run_options"]
    assert "--env-file /etc/read/node.env" in cluster["docker"]["run_options"]
    assert any("--dashboard-host=127.0.0.1" in c for c in cluster["head_start_ray_commands"])


def test_kuberay_clusters_use_token_auth_and_are_reachable_only_in_cluster() -> None:
    for name, doc in _ray_resources():
        spec = _cluster_spec(doc)
        assert spec.get("authOptions", {}).get("mode") == "token", name
        head = spec["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", name
        assert head.get("enableIngress", False) is False, name
    [policy] = [doc for _, doc in _core_resources() if doc["kind"] == "NetworkPolicy"]
    assert policy["metadata"]["namespace"] == "read" and policy["spec"]["podSelector"] == {}
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    sources = policy["spec"]["ingress"]
    assert {"from": [{"podSelector": {}}]} in sources  # the namespace itself
    outside = [rule for rule in sources if rule != {"from": [{"podSelector": {}}]}]
    for rule in outside:  # the operator, and only to the job API
        assert rule["ports"] == [{"protocol": "TCP", "port": 8265}], rule
    [role] = [doc for _, doc in _core_resources() if doc["kind"] == "Role"]
    assert role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayclusters"],
                              "verbs": ["get"]}]


def test_kuberay_pods_need_the_mlflow_credentials_secret() -> None:
    for name, doc in _ray_resources():
        for where, _, container in _containers(doc):
            if where == "submitter":
                continue
            refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container.get("env", [])
                    if "valueFrom" in e}
            for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                assert refs[variable]["name"] == "mlflow-auth", f"{name} {where}"
                assert not refs[variable].get("optional", False), f"{name} {where}"


def test_mlflow_server_requires_authentication(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.server.auth.config import read_auth_config

    for where, argv in _mlflow_server_commands().items():
        assert argv[argv.index("--app-name") + 1] == "basic-auth", where
    deployment = next(doc for doc in _documents(INFRA / "mlflow" / "k8s.yaml")
                      if doc["kind"] == "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    for variable in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert "secretKeyRef" in env[variable]["valueFrom"], variable
    compose = _documents(INFRA / "mlflow" / "docker-compose.yaml")[0]["services"]["mlflow"]
    assert compose["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${")
    # The committed auth settings parse with MLflow's own reader and hold no password.
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(INFRA / "mlflow" / "basic_auth.ini"))
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    settings = read_auth_config()
    assert settings.admin_password is None and settings.default_permission == "READ"
    service = next(doc for doc in _documents(INFRA / "mlflow" / "k8s.yaml")
                   if doc["kind"] == "Service" and doc["metadata"]["name"] == "mlflow")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
