"""KubeRay manifests: schema-valid (Kubernetes core/v1 for native objects and pod templates, a
structural KubeRay v1 schema for the custom resources), autoscaled, on shared storage, pointed at
MLflow, and running job files, flags and a Serve application that exist in this repository."""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import infra_checks as ic
import jsonschema
import pytest
import yaml

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate not installed (it is in the dev extra)")

K8S_VERSION = "1.30.0"  # oldest Kubernetes the manifests target; fields newer than it fail validation
SCHEMA = json.loads((Path(__file__).parent / "kuberay_v1_subset.schema.json").read_text())
RAY_KINDS = {"RayCluster", "RayJob", "RayService"}


def _render_module():
    spec = importlib.util.spec_from_file_location("_pdfusion_render", ic.KUBERAY / "render.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _docs(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in ic.kuberay_docs() if d.get("kind") == kind]


def _ray_errors(doc: dict) -> list[str]:
    v = jsonschema.Draft202012Validator(SCHEMA)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(doc)]


def test_every_kuberay_document_is_a_known_kind():
    docs = ic.kuberay_docs()
    kinds = {d.get("kind") for _, d in docs}
    assert {"RayCluster", "RayJob", "RayService", "PersistentVolumeClaim", "ConfigMap"} <= kinds
    assert kinds <= RAY_KINDS | {"PersistentVolumeClaim", "ConfigMap"}


def test_native_objects_are_valid_kubernetes():
    native = [(p, d) for p, d in ic.kuberay_docs() if d["kind"] not in RAY_KINDS]
    assert native
    for path, doc in native:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            raise AssertionError(f"{path.name}: {doc['kind']}: {err.message}") from err


@pytest.mark.parametrize("path", sorted(ic.KUBERAY.glob("*.yaml")), ids=lambda p: p.name)
def test_ray_custom_resources_match_the_kuberay_v1_schema(path):
    for doc in ic.load_docs(path):
        if doc["kind"] in RAY_KINDS:
            assert not _ray_errors(doc), _ray_errors(doc)


def test_every_pod_template_is_a_valid_core_v1_pod_template():
    n = 0
    for where, spec in ic.cluster_specs():
        for group, tmpl in ic.pod_templates(spec):
            pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": group},
                            "template": tmpl}
            try:
                kubernetes_validate.validate(pod_template, K8S_VERSION, strict=True)
            except kubernetes_validate.ValidationError as err:
                raise AssertionError(f"{where}/{group}: {err.message}") from err
            n += 1
    assert n >= 3 * 3  # head + 2 worker groups in the cluster, each job and the service


def test_validators_are_live_they_reject_broken_manifests():
    """A schema that accepts anything proves nothing: typical mistakes must fail."""
    (_, cluster), = _docs("RayCluster")
    bad = copy.deepcopy(cluster)
    bad["spec"]["workerGroupSpecs"][0]["minReplica"] = 1  # misspelt field
    assert any("minReplica" in e for e in _ray_errors(bad))
    bad = copy.deepcopy(cluster)
    bad["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    assert _ray_errors(bad)
    tmpl = copy.deepcopy(cluster["spec"]["headGroupSpec"]["template"])
    tmpl["spec"]["containers"][0]["resource"] = {}  # misspelt `resources`
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"},
                                      "template": tmpl}, K8S_VERSION, strict=True)


def test_cluster_autoscales_a_gpu_worker_group_between_min_and_max():
    (_, cluster), = _docs("RayCluster")
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    for where, spec in ic.cluster_specs():
        for g in spec["workerGroupSpecs"]:
            lo, hi, n = g["minReplicas"], g["maxReplicas"], g.get("replicas", g["minReplicas"])
            assert 0 <= lo <= n <= hi and hi >= 1, f"{where}/{g['groupName']}: min {lo} replicas {n} max {hi}"
        gpu = [g for g in spec["workerGroupSpecs"]
               if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
                      for c in g["template"]["spec"]["containers"])]
        assert gpu, f"{where}: no worker group requests nvidia.com/gpu"
        for g in gpu:
            limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert int(limits["nvidia.com/gpu"]) >= 1


def _gpu_capacity(spec: dict) -> int:
    return sum(g["maxReplicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]
                                      .get("nvidia.com/gpu", 0))
               for g in spec["workerGroupSpecs"])


def test_gpu_jobs_fit_their_autoscaled_gpu_group():
    """Workers x concurrent trials x GPUs per worker must fit maxReplicas x GPUs per pod, or the
    job waits forever for resources the autoscaler may not create."""
    jobs = {d["metadata"]["name"]: d for _, d in _docs("RayJob")}
    assert "pdfusion-train" in jobs
    checked = 0
    for name, job in jobs.items():
        for call in ic.job_calls(job["spec"]["entrypoint"], name):
            args = ic.parser_for(call.script).parse_args(call.argv)
            if not getattr(args, "use_gpu", False):
                continue
            per_worker = getattr(args, "gpus_per_worker", None) or 1
            need = (args.num_workers or 1) * per_worker * (getattr(args, "max_concurrent", None) or 1)
            have = _gpu_capacity(job["spec"]["rayClusterSpec"])
            assert need <= have, f"{name}: needs {need} GPUs, its GPU group scales to {have}"
            checked += 1
    assert checked >= 1
    assert all(j["spec"]["shutdownAfterJobFinishes"] is True for j in jobs.values())


def test_every_pod_mounts_the_shared_volume_where_jobs_write():
    pvcs = {d["metadata"]["name"]: d for _, d in _docs("PersistentVolumeClaim")}
    for claim in pvcs.values():
        assert "ReadWriteMany" in claim["spec"]["accessModes"], "all nodes write checkpoints: need RWX"
    for where, spec in ic.cluster_specs():
        for group, tmpl in ic.pod_templates(spec):
            vols = {v["name"]: v for v in tmpl["spec"].get("volumes", [])}
            for c in tmpl["spec"]["containers"]:
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                assert ic.SHARED_MOUNT in mounts, f"{where}/{group}: {ic.SHARED_MOUNT} not mounted"
                claim = vols[mounts[ic.SHARED_MOUNT]]["persistentVolumeClaim"]["claimName"]
                assert claim in pvcs, f"{where}/{group}: claim {claim} is not defined in infra/kuberay"
    for _, job in _docs("RayJob"):
        for call in ic.job_calls(job["spec"]["entrypoint"], job["metadata"]["name"]):
            for flag in ("--storage-path", "--data", "--out", "--output"):
                if flag in call.argv:
                    value = call.argv[call.argv.index(flag) + 1]
                    assert value.startswith(ic.SHARED_MOUNT + "/"), f"{job['metadata']['name']}: {flag} {value}"


def test_every_ray_container_gets_the_mlflow_tracking_uri():
    (_, cm), = [(p, d) for p, d in _docs("ConfigMap") if d["metadata"]["name"] == "pdfusion-env"]
    assert cm["data"]["MLFLOW_TRACKING_URI"].startswith(("http://", "https://"))
    for where, spec in ic.cluster_specs():
        for group, tmpl in ic.pod_templates(spec):
            for c in tmpl["spec"]["containers"]:
                refs = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
                assert "pdfusion-env" in refs, f"{where}/{group}/{c['name']}: no MLFLOW_TRACKING_URI"
                # S3 credentials only from a Secret, and optional (artifacts are proxied by default).
                secrets = [e["secretRef"] for e in c.get("envFrom", []) if "secretRef" in e]
                assert secrets == [{"name": "pdfusion-s3", "optional": True}], f"{where}/{group}: {secrets}"
                assert not [e for e in c.get("env", []) if e["name"].startswith("AWS_") and "value" in e]


def test_job_entrypoints_run_existing_jobs_with_flags_their_parsers_accept():
    calls = [c for where, cmd in ic.manifest_commands() for c in ic.job_calls(cmd, where)]
    assert any(c.script.name == "train_egnn.py" for c in calls)
    problems = [p for c in calls for p in ic.check_call(c)]
    assert not problems, "\n".join(problems)


def test_flag_checker_is_live():
    train = ic.ROOT / "jobs" / "train_egnn.py"
    assert ic.check_call(ic.JobCall(train, ["--num-workers", "2"], "ok")) == []
    assert ic.check_call(ic.JobCall(train, ["--num-wrokers", "2"], "typo"))
    assert ic.check_call(ic.JobCall(train, ["--num-workers", "two"], "type"))
    assert ic.check_call(ic.JobCall(ic.ROOT / "jobs" / "no_such_job.py", [], "missing"))
    sweep = ic.ROOT / "jobs" / "tune_schedules.py"
    assert any("--data" in p for p in ic.check_call(ic.JobCall(sweep, ["--preset", "gpu"], "required")))


def test_flag_checker_falls_back_to_help_output(tmp_path):
    """A job that builds its parser inside main() is checked against its `--help` text."""
    script = tmp_path / "job_without_parser_function.py"
    script.write_text("import argparse\nif __name__ == '__main__':\n"
                      "    p = argparse.ArgumentParser()\n    p.add_argument('--epochs', type=int)\n"
                      "    p.add_argument('--use-gpu', action='store_true')\n    p.parse_args()\n")
    assert ic.check_call(ic.JobCall(script, ["--epochs", "3", "--use-gpu"], "ok")) == []
    assert ic.check_call(ic.JobCall(script, ["--epoch", "3"], "typo"))


def test_generated_manifests_are_up_to_date():
    res = subprocess.run([sys.executable, str(ic.KUBERAY / "render.py"), "--check"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    render = _render_module()
    expected = {f"rayjob-{n}.yaml" for n, (script, _, _) in render.JOBS.items()
                if (ic.ROOT / "jobs" / script).is_file()} | {"rayservice.yaml"}
    assert {p.name for p in render.generated_files()} == expected
    assert "rayjob-train.yaml" in expected


def _serve_source() -> dict:
    return yaml.safe_load((ic.ROOT / "serve" / "config.yaml").read_text())


def _serve_v2() -> dict:
    (_, svc), = _docs("RayService")
    return yaml.safe_load(svc["spec"]["serveConfigV2"])


def test_rayservice_serves_the_same_application_as_serve_config():
    """Same applications as serve/config.yaml; the only differences are the listed cluster args
    (model from the MLflow registry, GPU replicas) and the proxy listening on all interfaces."""
    overrides = _render_module().SERVE_ARG_OVERRIDES
    assert set(overrides) <= {"model", "device", "num_gpus", "num_cpus"}
    src, v2 = _serve_source(), _serve_v2()
    assert [a["name"] for a in v2["applications"]] == [a["name"] for a in src["applications"]]
    for got, want in zip(v2["applications"], src["applications"], strict=True):
        assert {k: v for k, v in got.items() if k != "args"} == {k: v for k, v in want.items() if k != "args"}
        assert {k: v for k, v in got["args"].items() if k not in overrides} == \
            {k: v for k, v in want["args"].items() if k not in overrides}
        assert {k: got["args"][k] for k in overrides} == overrides
    assert {k: v for k, v in v2.items() if k not in ("applications", "http_options")} == \
        {k: v for k, v in src.items() if k not in ("applications", "http_options")}
    assert v2["http_options"]["host"] == "0.0.0.0" and v2["http_options"]["port"] == 8000


def test_serve_config_v2_is_a_valid_serve_deployment_for_this_code():
    from ray.serve.schema import ServeDeploySchema

    v2 = _serve_v2()
    ServeDeploySchema.model_validate(v2)
    from pdfusion.serving.app import serve_config_from_args

    for app in v2["applications"]:
        cfg = serve_config_from_args(app["args"])
        assert cfg.device.startswith("cuda") and cfg.num_gpus > 0
        assert cfg.model.startswith("models:/")
        module, _, attr = app["import_path"].partition(":")
        path = ic.ROOT / (module.replace(".", "/") + ".py")
        spec = importlib.util.spec_from_file_location("_pdfusion_serve_app", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        assert callable(getattr(mod, attr)), f"{app['import_path']} is not callable"


def test_rayservice_cluster_has_gpus_for_its_replicas():
    (_, svc), = _docs("RayService")
    want = sum(a["args"]["num_gpus"] * a["args"]["max_replicas"] for a in _serve_v2()["applications"])
    assert 0 < want <= _gpu_capacity(svc["spec"]["rayClusterConfig"])
