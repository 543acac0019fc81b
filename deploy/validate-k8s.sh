#!/usr/bin/env bash
# Validates deploy/k8s/*.yaml offline, with no cluster:
#  1. against the Kubernetes OpenAPI schemas, strictly (an unknown field is an error), with
#     kubernetes-validate from PyPI, which ships the schemas of every version it knows inside
#     the package; checked against the oldest and the newest versions named in K8S_VERSIONS;
#  2. for what a schema cannot see: selectors that match the pod labels, probe ports that
#     name a container port, and this project's rules (A: 3 replicas behind a headless
#     Service; a PodDisruptionBudget with maxUnavailable: 1 for A and for B; topology spread
#     for both; liveness /health, readiness /ready with a period of at most 2 s; requests and
#     limits; SERVICE_*_DRAIN_MS set and terminationGracePeriodSeconds above that drain plus
#     the 5 s in-flight grace; images tagged with the workspace version of Cargo.toml, never
#     latest, and compose.yaml naming the same tag; Prometheus annotations, non-root,
#     read-only root).
# Installs kubernetes-validate with pip when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

versions=${K8S_VERSIONS:-"1.25.0 1.37.0"}
manifests=(deploy/k8s/*.yaml)

if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "== installing kubernetes-validate (PyPI)"
  python3 -m pip install -q --disable-pip-version-check "kubernetes-validate>=1.37,<2"
  hash -r
fi
echo "== kubernetes-validate $(kubernetes-validate --version 2>&1 | tail -n 1)"

for v in $versions; do
  echo "== schemas of Kubernetes $v (strict)"
  kubernetes-validate --strict --kubernetes-version "$v" "${manifests[@]}"
done

echo "== selectors, ports and the project's rules"
python3 - "${manifests[@]}" <<'PY'
import re
import sys
import tomllib
import yaml

with open("Cargo.toml", "rb") as f:
    version = tomllib.load(f)["workspace"]["package"]["version"]

docs = []
for path in sys.argv[1:]:
    with open(path) as f:
        docs += [(path, d) for d in yaml.safe_load_all(f) if d]

errors = []
def check(ok, what):
    if not ok:
        errors.append(what)

def by_kind(kind):
    return [(p, d) for p, d in docs if d.get("kind") == kind]

def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

deployments = {d["metadata"]["name"]: d for _, d in by_kind("Deployment")}
services = {d["metadata"]["name"]: d for _, d in by_kind("Service")}
pdbs = [d for _, d in by_kind("PodDisruptionBudget")]

for name, dep in deployments.items():
    spec = dep["spec"]
    pod = spec["template"]
    labels = pod["metadata"].get("labels", {})
    check(matches(spec["selector"].get("matchLabels"), labels),
          f"deployment/{name}: selector does not match the pod labels")
    ann = pod["metadata"].get("annotations", {})
    podspec = pod["spec"]
    grace = podspec.get("terminationGracePeriodSeconds", 30)
    psc = podspec.get("securityContext", {})
    spread = podspec.get("topologySpreadConstraints", [])
    check(any(t.get("topologyKey") == "kubernetes.io/hostname"
              and matches(t.get("labelSelector", {}).get("matchLabels"), labels) for t in spread),
          f"deployment/{name}: topologySpreadConstraints over kubernetes.io/hostname selecting its pods")
    for c in podspec["containers"]:
        cname = f"deployment/{name} container {c['name']}"
        image = c.get("image", "")
        check(image.rpartition(":")[2] == version,
              f"{cname}: image {image!r} must be tagged with the workspace version {version}")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        drains = [v for k, v in env.items() if re.fullmatch(r"SERVICE_[AB]_DRAIN_MS", k)]
        check(len(drains) == 1 and str(drains[0]).isdigit(), f"{cname}: SERVICE_*_DRAIN_MS must be set")
        if len(drains) == 1 and str(drains[0]).isdigit():
            drain_s = int(drains[0]) / 1000
            check(grace > drain_s + 5,
                  f"{cname}: terminationGracePeriodSeconds {grace} must exceed the drain ({drain_s:g} s) + 5 s in-flight grace")
        period = c.get("readinessProbe", {}).get("periodSeconds", 10)
        check(period <= 2, f"{cname}: readinessProbe.periodSeconds {period} must be short (at most 2 s)")
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/path") == "/metrics"
              and ann.get("prometheus.io/port") in {str(p) for p in ports.values()},
              f"{cname}: Prometheus scrape annotations missing or not on a container port")
        for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
            get = c.get(probe, {}).get("httpGet", {})
            check(get.get("path") == path, f"{cname}: {probe} must GET {path}")
            port = get.get("port")
            check(port in ports or port in ports.values(), f"{cname}: {probe} port {port!r} is not a container port")
        res = c.get("resources", {})
        for part in ("requests", "limits"):
            check({"cpu", "memory"} <= set(res.get(part, {})), f"{cname}: resources.{part} needs cpu and memory")
        csc = c.get("securityContext", {})
        check(csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{cname}: runAsNonRoot")
        check(csc.get("readOnlyRootFilesystem") is True, f"{cname}: readOnlyRootFilesystem")
        check(c.get("imagePullPolicy") in ("Never", "IfNotPresent"), f"{cname}: there is no registry to pull from")

for name, svc in services.items():
    sel = svc["spec"].get("selector", {})
    targets = [d for d in deployments.values() if matches(sel, d["spec"]["template"]["metadata"].get("labels", {}))]
    check(len(targets) == 1, f"service/{name}: selector must match exactly one Deployment's pods")
    for t in targets:
        names = {p.get("name") for c in t["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        nums = {p["containerPort"] for c in t["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            check(tp in names or tp in nums, f"service/{name}: targetPort {tp!r} is not a port of its pods")

a, b = deployments.get("service-a"), deployments.get("service-b")
check(a is not None and b is not None, "Deployments service-a and service-b are both needed")
if a is not None:
    check(a["spec"].get("replicas") == 3, "deployment/service-a: 3 replicas")
    check(services.get("service-a", {}).get("spec", {}).get("clusterIP") == "None",
          "service/service-a must be headless (clusterIP: None) so B resolves every pod")
    a_labels = a["spec"]["template"]["metadata"]["labels"]
if b is not None:
    env = {e["name"]: e.get("value") for e in b["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    check(env.get("SERVICE_A_URL") == "http://service-a:8080", "deployment/service-b: SERVICE_A_URL=http://service-a:8080")
    check("service-b" in services, "a Service for B is needed")

for name, dep in deployments.items():
    labels = dep["spec"]["template"]["metadata"].get("labels", {})
    mine = [p for p in pdbs if matches(p["spec"]["selector"].get("matchLabels"), labels)]
    check(len(mine) == 1, f"deployment/{name}: exactly one PodDisruptionBudget must select its pods")
    for p in mine:
        check(p["spec"].get("maxUnavailable") == 1 and "minAvailable" not in p["spec"],
              f"poddisruptionbudget/{p['metadata']['name']}: maxUnavailable: 1")

# compose.yaml names the same images, by the same tag (its default when IMAGE_TAG is unset).
with open("compose.yaml") as f:
    compose = yaml.safe_load(f)
for svc, spec in compose["services"].items():
    image = spec.get("image", "")
    m = re.fullmatch(r"echo-service-[ab]:\$\{IMAGE_TAG:-([^}]*)\}", image)
    check(m is not None and m.group(1) == version,
          f"compose.yaml {svc}: image {image!r} must be echo-service-X:${{IMAGE_TAG:-{version}}}")

for e in errors:
    print("ERROR", e)
if errors:
    sys.exit(1)
print(f"OK {len(docs)} resources: selectors, ports and rules hold; images tagged {version}")
PY
