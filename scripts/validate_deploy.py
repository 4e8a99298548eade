"""Checks what `kubectl kustomize` rendered from deploy/, offline.

Every object is validated against its schema, as an API server with strict field validation
would (unknown fields are errors):
  - Kubernetes' own kinds against the OpenAPI schemas kubernetes-validate ships, for each
    Kubernetes version asked for;
  - custom resources (PodMonitor, NodeReadinessRule) against the openAPIV3Schema of their CRD,
    copied into scripts/crds/ from the project that defines it, with metadata checked as
    Kubernetes' ObjectMeta. The CRDs' CEL rules (x-kubernetes-validations) are not evaluated;
    the one that concerns what deploy/ writes (the readiness taint's readiness.k8s.io/ prefix)
    is checked below as an invariant.
A kind with no schema is an error, not a warning.

Then the invariants the manifests promise, per rendering: the agent's container holds no API
credentials and mounts every host path read-only, every mount names a volume of the pod (and
every volume is mounted), and a node-layout component (k3s, rke2, microk8s) has moved every
host path it owns.

    validate_deploy.py --crds DIR --kubernetes 1.30,1.37 RENDERED.yaml...
"""

import argparse
import copy
import hashlib
import json
import pathlib
import sys

import jsonschema
import kubernetes_validate
import referencing
import yaml
from kubernetes_validate import utils as kv

# Host paths a node layout must have moved, and where they go (the prefix).
LAYOUT_PREFIXES = {
    "k3s": ("/run/k3s/", "/var/lib/rancher/"),
    "rke2": ("/run/k3s/", "/var/lib/rancher/"),
    "microk8s": ("/var/snap/microk8s/",),
}
# Volumes each layout relocates (credential-provider volumes have no MicroK8s convention).
LAYOUT_VOLUMES = {
    "k3s": {"containerd-run", "containerd-content", "certs-d", "credential-provider-config",
            "credential-provider-bin"},
    "rke2": {"containerd-run", "containerd-content", "certs-d", "credential-provider-config",
             "credential-provider-bin"},
    "microk8s": {"containerd-run", "containerd-content", "certs-d", "node-credentials"},
}
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFINITIONS = "https://kubernetes.io/api/_definitions.json"


def to_json_schema(node, strict=True):
    """An OpenAPI v3 structural schema (a CRD's) as JSON Schema, with unknown fields refused
    where the schema does not preserve them."""
    if isinstance(node, list):
        return [to_json_schema(n, strict) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v, strict) for k, v in node.items()
           if k not in ("properties", "additionalProperties")}
    if "properties" in node:
        out["properties"] = {k: to_json_schema(v, strict) for k, v in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(node["additionalProperties"], strict)
    elif "additionalProperties" in node:
        out["additionalProperties"] = node["additionalProperties"]
    if node.get("x-kubernetes-int-or-string") and "type" not in node:
        out["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = types + ["null"]
    if (strict and node.get("type") == "object" and "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def load_crds(directory):
    """(apiVersion, kind) -> JSON Schema, from every CRD in `directory`."""
    schemas = {}
    for path in sorted(pathlib.Path(directory).glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = to_json_schema(version["schema"]["openAPIV3Schema"])
                schema["properties"]["metadata"] = {
                    "$ref": DEFINITIONS + "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
                schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
                schemas[(f"{group}/{version['name']}", kind)] = (schema, path.name)
    return schemas


def definitions(version):
    """Kubernetes' shared definitions (ObjectMeta...) for `version`, as kubernetes-validate
    picks them: the newest schemas not newer than it."""
    versions = [v for v in kv.all_versions() if kv.major_minor(v) <= kv.major_minor(version)]
    if not versions:
        raise SystemExit(f"validate-deploy: kubernetes-validate {kubernetes_validate.__version__} "
                         f"has no schemas for Kubernetes {version}; pick one of {kv.all_versions()}")
    return kv.schema_contents(f"kubernetes-json-schema/v{versions[-1]}-local-strict/_definitions.json",
                              version)


class Checker:
    def __init__(self, crds, versions):
        self.crds = crds
        self.versions = versions
        self.seen = {}  # canonical object -> errors (objects repeat across renderings)
        self.registries = {}

    def registry(self, version):
        if version not in self.registries:
            defs = referencing.Resource.from_contents(definitions(version))
            self.registries[version] = defs @ referencing.Registry()
        return self.registries[version]

    def schema_errors(self, obj):
        key = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
        if key in self.seen:
            return self.seen[key]
        errors = []
        custom = self.crds.get((obj.get("apiVersion"), obj.get("kind")))
        for version in self.versions:
            if custom:
                schema, crd_file = custom
                validator = jsonschema.Draft202012Validator(schema, registry=self.registry(version))
                for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.path)):
                    path = ".".join(str(p) for p in e.path) or "(top level)"
                    errors.append(f"{path}: {e.message} (schema: scripts/crds/{crd_file}, "
                                  f"metadata as Kubernetes {version})")
                break  # a CRD's schema does not depend on the Kubernetes version
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path) or "(top level)"
                errors.append(f"{path}: {e.message} (Kubernetes {e.version} schema, strict)")
            except kv.SchemaNotFoundError:
                errors.append(f"no schema for apiVersion {obj.get('apiVersion')} kind "
                              f"{obj.get('kind')} in Kubernetes {version}: a typo, or a custom "
                              "resource whose CRD belongs in scripts/crds/")
                break
        self.seen[key] = errors
        return errors


def invariants(objects):
    """What the manifests promise beyond their schemas."""
    errors = []
    daemonsets = [o for o in objects if o.get("kind") == "DaemonSet"
                  and o["metadata"].get("name") == "prepull"]
    if len(daemonsets) != 1:
        return [f"expected one DaemonSet prepull, found {len(daemonsets)}"]
    ds = daemonsets[0]
    pod = ds["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    containers = pod.get("containers", [])
    if not containers or containers[0].get("name") != "prepull":
        errors.append("the agent's container is not the pod's first container (named prepull): "
                      "a component's JSON patch on containers/0 would hit another one")
    if pod.get("automountServiceAccountToken") is not False:
        errors.append("spec.template.spec.automountServiceAccountToken must stay false: the agent "
                      "holds no API credentials (a sidecar that needs a token mounts its own)")
    agent_env = (containers[0].get("env") or []) if containers else []
    node_name = [e for e in agent_env if e.get("name") == "NODE_NAME"]
    if not node_name or node_name[0].get("valueFrom", {}).get("fieldRef", {}) \
            .get("fieldPath") != "spec.nodeName":
        errors.append("the agent's container must get NODE_NAME from the downward API (fieldRef "
                      "spec.nodeName): without it each node's passes fall at random in the "
                      "--splay window instead of at the node's own slot")
    for container in containers:
        where = f"container {container.get('name')}"
        for mount in container.get("volumeMounts", []):
            volume = volumes.get(mount["name"])
            if volume is None:
                errors.append(f"{where}: volumeMount {mount['name']} names no volume of the pod")
                continue
            if container.get("name") == "prepull":
                if "projected" in volume or "serviceAccountToken" in json.dumps(volume) \
                        or mount["mountPath"].startswith(TOKEN_PATH):
                    errors.append(f"{where}: mounts {mount['name']}, an API token: the agent "
                                  "holds no API credentials")
                if "hostPath" in volume and not mount.get("readOnly"):
                    errors.append(f"{where}: host path {volume['hostPath']['path']} "
                                  f"({mount['name']}) is mounted writable; the agent writes "
                                  "nothing on the node outside containerd's API")
    for name in volumes:
        if not any(m["name"] == name for c in containers for m in c.get("volumeMounts", [])):
            errors.append(f"volume {name} is mounted by no container")
    layout = ds["metadata"].get("annotations", {}).get("prepull.io/node-layout")
    if layout is not None:
        if layout not in LAYOUT_PREFIXES:
            errors.append(f"unknown prepull.io/node-layout {layout!r}")
        else:
            for name in LAYOUT_VOLUMES[layout] & volumes.keys():
                path = volumes[name].get("hostPath", {}).get("path", "")
                if not path.startswith(LAYOUT_PREFIXES[layout]):
                    errors.append(f"node layout {layout}: volume {name} still uses host path "
                                  f"{path} (list the {layout} component before the others)")
    for rule in (o for o in objects if o.get("kind") == "NodeReadinessRule"):
        key = rule["spec"]["taint"]["key"]
        if not key.startswith("readiness.k8s.io/") or key.count("/") != 1:
            errors.append(f"NodeReadinessRule {rule['metadata']['name']}: taint key {key} must be "
                          "readiness.k8s.io/<name> (the CRD's rule)")
    return errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crds", required=True)
    parser.add_argument("--kubernetes", required=True, help="comma-separated versions")
    parser.add_argument("rendered", nargs="+")
    args = parser.parse_args()
    checker = Checker(load_crds(args.crds), args.kubernetes.split(","))
    failed = 0
    for path in args.rendered:
        name = pathlib.Path(path).stem
        objects = [o for o in yaml.safe_load_all(pathlib.Path(path).read_text()) if o]
        errors = []
        for obj in objects:
            what = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            errors += [f"{what}: {e}" for e in checker.schema_errors(copy.deepcopy(obj))]
        errors += invariants(objects)
        if errors:
            failed += 1
            print(f"FAIL {name} ({path}):")
            for error in errors:
                print(f"  {error}")
        else:
            kinds = sorted({o["kind"] for o in objects})
            print(f"ok   {name}: {len(objects)} objects ({', '.join(kinds)})")
    print(f"validate-deploy: {len(args.rendered) - failed} renderings valid, {failed} invalid, "
          f"against Kubernetes {args.kubernetes} and the CRDs in {args.crds}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
