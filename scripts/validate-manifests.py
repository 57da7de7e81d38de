#!/usr/bin/env python3
"""Validates every YAML that ships against the official Kubernetes schemas.

- crds/*.yaml                      -> apiextensions.k8s.io/v1 schema (kubernetes-validate)
- helm/stoa-operator               -> `helm lint` (strict) and rendering with two value sets
                                      (helm-python-sdk, which embeds Helm), every rendered
                                      object validated; values.schema.json must reject bad values
- manifests/*                      -> `kubectl kustomize`, every object validated
- example Stoa resources           -> the CRD's own openAPIV3Schema (jsonschema), plus the
                                      structural rules the API server would apply
- operator/tests/golden/*.yaml     -> what the reconciler applies, validated like the rest
- `stoa-operator render` of the example Stoas (first install, and after approval with each
  autoscaling mode)                -> validated like the rest

A PrometheusRule's spec goes through `promtool check rules`; other projects' custom resources
(ServiceMonitor) are checked for apiVersion/kind only.
Needs: pip install kubernetes-validate helm-python-sdk jsonschema; kubectl on PATH.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from helm_python import chart as helm_chart

ROOT = Path(__file__).resolve().parent.parent
K8S_VERSION = "1.32.0"
CRD_PATH = ROOT / "crds" / "stoa.dev_stoas.yaml"
FOREIGN_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
PROMETHEUS_RULE = ("monitoring.coreos.com/v1", "PrometheusRule")

failures: list[str] = []
checked = 0


def fail(message: str) -> None:
    failures.append(message)
    print(f"  FAIL {message}")


def stoa_schema() -> dict:
    crd = yaml.safe_load(CRD_PATH.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def validate_stoa(obj: dict, origin: str) -> None:
    schema = copy.deepcopy(stoa_schema())
    try:
        jsonschema.validate(obj, schema)
    except jsonschema.ValidationError as error:
        fail(f"{origin}: Stoa {obj['metadata'].get('name')}: {error.message} at {list(error.absolute_path)}")
        return
    spec = obj.get("spec", {})
    scaling = spec.get("autoscaling", {})
    if scaling.get("mode", "Disabled") != "Disabled" and scaling.get("minReplicas", 2) > scaling.get("maxReplicas", 10):
        fail(f"{origin}: autoscaling.minReplicas > maxReplicas (the CRD's CEL rule would reject it)")


def validate_object(obj: dict, origin: str) -> None:
    global checked
    if not obj:
        return
    checked += 1
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    name = obj.get("metadata", {}).get("name")
    if (api_version, kind) == ("stoa.dev/v1alpha1", "Stoa"):
        validate_stoa(obj, origin)
        return
    if (api_version, kind) == PROMETHEUS_RULE:
        check_prometheus_rule(obj, origin)
        return
    if (api_version, kind) in FOREIGN_KINDS:
        if not name:
            fail(f"{origin}: {kind} without a name")
        return
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        fail(f"{origin}: {kind} {name}: {error.message} at {list(error.path)}")
    except kubernetes_validate.SchemaNotFoundError:
        fail(f"{origin}: no schema for {api_version} {kind}")


def check_prometheus_rule(obj: dict, origin: str) -> None:
    """A PrometheusRule's spec is a Prometheus rule file: promtool checks it."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as rules:
        yaml.safe_dump(obj.get("spec", {}), rules)
        rules.flush()
        result = subprocess.run(["promtool", "check", "rules", rules.name], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        fail(f"{origin}: PrometheusRule {obj['metadata'].get('name')}: {result.stdout.strip()} {result.stderr.strip()}")


def validate_documents(text: str, origin: str) -> int:
    count = 0
    for document in yaml.safe_load_all(text):
        if document:
            validate_object(document, origin)
            count += 1
    return count


def check_crds() -> None:
    print("CRDs")
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        n = validate_documents(path.read_text(), str(path.relative_to(ROOT)))
        print(f"  {path.relative_to(ROOT)}: {n} object(s)")


def check_helm() -> None:
    print("Helm chart")
    path = ROOT / "helm" / "stoa-operator"
    value_sets = {
        "defaults": {},
        "cluster-wide": {"clusterWide": True},
        "namespaced+monitoring": {
            "watchNamespace": "apps",
            "replicaCount": 1,
            "leaderElection": {"enabled": False},
            "metrics": {"serviceMonitor": {"enabled": True, "always": True, "interval": "15s"},
                        "prometheusRule": {"create": "always", "labels": {"release": "prom"}},
                        "slo": {"availability": 0.995, "latency": {"objective": 0.95, "threshold": "0.5"}},
                        "dashboard": {"namespace": "monitoring"}},
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }
    for label, values in value_sets.items():
        report = helm_chart.lint(str(path), values, strict=True, kube_version=f"v{K8S_VERSION}")
        problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + report.get("errors", [])
        for problem in problems:
            fail(f"helm lint ({label}): {problem}")
        loaded = helm_chart.Chart.load(str(path))
        rendered = loaded.render(values, name="stoa", namespace="stoa-system", is_install=True)
        n = 0
        for template, text in sorted(rendered.items()):
            if template.endswith(".yaml"):
                n += validate_documents(text, f"helm[{label}] {template}")
        for crd in loaded.crds:
            n += validate_documents(crd.get("data", ""), f"helm[{label}] crds/{crd.get('name')}")
        print(f"  {label}: lint clean, {n} rendered object(s)")
    # The values schema must refuse nonsense.
    for bad in ({"replicaCount": 0}, {"image": {"pullPolicy": "Sometimes"}}, {"unknownKey": True},
                {"leaderElection": {"enabled": False}, "replicaCount": 2}):
        try:
            helm_chart.Chart.load(str(path)).validate_schema(bad)
            fail(f"values.schema.json accepted {bad}")
        except Exception:  # noqa: BLE001 - any rejection is the expected outcome
            pass
    print("  values.schema.json rejects invalid values")
    for example in sorted((path / "examples").glob("*.yaml")):
        validate_documents(example.read_text(), str(example.relative_to(ROOT)))


def check_kustomize() -> None:
    print("Kustomize")
    for directory in sorted(p for p in (ROOT / "manifests").iterdir() if (p / "kustomization.yaml").exists()):
        result = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            fail(f"kubectl kustomize {directory.relative_to(ROOT)}: {result.stderr.strip()}")
            continue
        n = validate_documents(result.stdout, str(directory.relative_to(ROOT)))
        print(f"  {directory.relative_to(ROOT)}: {n} object(s)")


def check_operator_output() -> None:
    """The objects the operator creates (its golden files) must be valid too."""
    print("Operator output (golden files)")
    for path in sorted((ROOT / "operator" / "tests" / "golden").glob("*.yaml")):
        n = validate_documents(path.read_text(), str(path.relative_to(ROOT)))
        print(f"  {path.relative_to(ROOT)}: {n} object(s)")


def operator_command() -> list[str]:
    binary = ROOT / "target" / "debug" / "stoa-operator"
    if binary.exists():
        return [str(binary)]
    return ["cargo", "run", "-q", "-p", "stoa-operator", "--"]


def check_render() -> None:
    """`stoa-operator render` prints what would be applied: it must be valid too."""
    print("stoa-operator render")
    example = ROOT / "manifests" / "example" / "stoa.yaml"
    stoa = yaml.safe_load(example.read_text())
    variants = {"first install": stoa}
    for mode in ("Disabled", "Hpa", "Concurrency"):
        approved = copy.deepcopy(stoa)
        approved["spec"].setdefault("autoscaling", {})["mode"] = mode
        approved["spec"]["networkPolicy"] = {"enabled": True}
        approved["status"] = {"approvedImage": stoa["spec"]["image"], "contractedImage": stoa["spec"]["image"]}
        variants[f"running, autoscaling {mode}"] = approved
    # Identity providers: the client secrets mounted into the API pods.
    variants["sign-in with Google and GitHub"] = yaml.safe_load(
        (ROOT / "helm" / "stoa-operator" / "examples" / "stoa-sign-in.yaml").read_text())
    for label, doc in variants.items():
        result = subprocess.run(
            [*operator_command(), "render", "-f", "-", "--namespace", "demo", "--service-monitors"],
            input=yaml.safe_dump(doc), capture_output=True, text=True, check=False, cwd=ROOT,
        )
        if result.returncode != 0:
            fail(f"stoa-operator render ({label}): {result.stderr.strip()}")
            continue
        n = validate_documents(result.stdout, f"render ({label})")
        print(f"  {label}: {n} object(s)")


def check_stoa_schema_rejects_bad_specs() -> None:
    print("Stoa schema")
    good = {"apiVersion": "stoa.dev/v1alpha1", "kind": "Stoa", "metadata": {"name": "x"},
            "spec": {"image": "img", "database": {"urlSecretRef": {"name": "db"}}}}
    before = len(failures)
    validate_stoa(good, "minimal Stoa")
    bad_specs = [
        {"image": "img"},  # no database
        {"image": "img", "database": {"urlSecretRef": {"name": "db"}}, "replicas": -1},
        {"image": "img", "database": {"urlSecretRef": {"name": "db"}}, "autoscaling": {"mode": "Sometimes"}},
        {"image": "img", "database": {"urlSecretRef": {"name": "db"}}, "auth": {"accessTokenTtl": "soon"}},
    ]
    for spec in bad_specs:
        try:
            jsonschema.validate({**good, "spec": spec}, stoa_schema())
            fail(f"the Stoa schema accepted {spec}")
        except jsonschema.ValidationError:
            pass
    if len(failures) == before:
        print(f"  accepts a minimal Stoa, rejects {len(bad_specs)} invalid ones")


def main() -> int:
    check_crds()
    check_helm()
    check_kustomize()
    check_operator_output()
    check_render()
    check_stoa_schema_rejects_bad_specs()
    if failures:
        print(f"\n{len(failures)} problem(s) in {checked} object(s)")
        return 1
    print(f"\nall {checked} objects valid against Kubernetes {K8S_VERSION} schemas")
    return 0


if __name__ == "__main__":
    sys.exit(main())
