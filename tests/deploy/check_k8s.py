#!/usr/bin/python3
"""Renders every overlay in deploy/k8s/overlays with `kubectl kustomize` and checks the objects.

  check_k8s.py REPO_ROOT

Per overlay: a Deployment whose container asks for an NVIDIA GPU (limit, and request = limit),
CPU and memory; native gRPC startup/readiness/liveness probes with service "" on the gRPC container
port, or with TLS on (--tls_cert) on the plaintext --health_listen port; TLS and token files
mounted read-only from Secrets that are not world-readable; flags that attnd defines, whose --listen / --metrics_listen ports are the container's
named ports; terminationGracePeriodSeconds covering preStop + --shutdown_grace; liveness that
outlasts the drain; non-root; a headless Service and a PodDisruptionBudget selecting the pods;
Prometheus scrape annotations on the metrics port; and, where present, a ServiceMonitor on the
metrics port and an HPA on a metric attnd really exports. Exit 77 (ctest: skipped) without a
kubectl whose kustomize understands these files (v4+).
"""
import json
import os
import re
import shutil
import subprocess
import sys

import yaml  # Debian's python3-yaml

FAILURES = []


def check(cond, msg):
    if not cond:
        FAILURES.append(msg)
    return cond


def seconds(duration):
    m = re.fullmatch(r"(\d+)s", duration)
    return int(m.group(1)) if m else None


def flag_map(args):
    return dict(a[2:].split("=", 1) if "=" in a else (a[2:], "true") for a in args if a.startswith("--"))


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_overlay(name, objs, attnd_flags, exported):
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    where = f"[{name}]"
    deps = by_kind.get("Deployment", [])
    if not check(len(deps) == 1, f"{where} expected one Deployment, got {len(deps)}"):
        return
    dep = deps[0]
    spec, pod = dep["spec"], dep["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    check(selects(spec["selector"]["matchLabels"], pod_labels), f"{where} selector does not match pod labels")
    check(pod_labels.get("app.kubernetes.io/part-of") == "attnd", f"{where} pods lack part-of label")
    namespaces = {o["metadata"].get("namespace") for o in objs}
    check(len(namespaces) == 1 and None not in namespaces, f"{where} objects in namespaces {namespaces}")

    c = pod["spec"]["containers"][0]
    res = c["resources"]
    check(int(res["limits"].get("nvidia.com/gpu", 0)) >= 1, f"{where} no nvidia.com/gpu limit")
    check(res["requests"].get("nvidia.com/gpu") == res["limits"].get("nvidia.com/gpu"),
          f"{where} GPU request != limit")
    check("cpu" in res["requests"] and "memory" in res["requests"], f"{where} no cpu/memory requests")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    flags = flag_map(c["args"])
    unknown = set(flags) - attnd_flags
    check(not unknown, f"{where} flags attnd does not define: {unknown}")
    check(flags.get("listen", "").startswith("0.0.0.0:") and port_of(flags["listen"]) == ports.get("grpc"),
          f"{where} --listen {flags.get('listen')} is not 0.0.0.0 on the grpc port {ports.get('grpc')}")
    check("metrics_listen" in flags and port_of(flags["metrics_listen"]) == ports.get("metrics"),
          f"{where} --metrics_listen is not the metrics port")
    check(c["image"].split(":")[0].endswith("attnd") and ":" in c["image"], f"{where} image {c['image']}")

    # Kubernetes' gRPC probes speak neither TLS nor tokens: with TLS on they must target the
    # plaintext health-only listener (--health_listen), a named container port of its own.
    tls = "tls_cert" in flags
    probe_port = ports.get("grpc")
    if tls:
        check("tls_key" in flags, f"{where} --tls_cert without --tls_key")
        if check("health_listen" in flags, f"{where} TLS on but no --health_listen for the probes"):
            probe_port = port_of(flags["health_listen"])
            check(ports.get("health") == probe_port, f"{where} --health_listen is not the container's health port")
            check(probe_port != ports.get("grpc"), f"{where} the health listener shares the gRPC port")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = c.get(probe)
        if check(p and "grpc" in p, f"{where} {probe} is not a native gRPC probe"):
            check(p["grpc"]["port"] == probe_port and p["grpc"].get("service", "") == "",
                  f"{where} {probe} not on port {probe_port} with service ''")
    # Every file a security flag names comes from a Secret mounted read-only, not world-readable.
    mounts = {m["mountPath"].rstrip("/"): m for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    for flag in ("tls_cert", "tls_key", "tls_client_ca", "auth_tokens_file"):
        if flag not in flags:
            continue
        path = flags[flag]
        mount = next((m for d, m in mounts.items() if path.startswith(d + "/")), None)
        if not check(mount is not None, f"{where} --{flag}={path} is on no volume mount"):
            continue
        check(mount.get("readOnly") is True, f"{where} the mount of --{flag} is not read-only")
        secret = volumes.get(mount["name"], {}).get("secret")
        if check(secret is not None, f"{where} --{flag} does not come from a Secret"):
            check(secret.get("defaultMode", 0o644) & 0o007 == 0, f"{where} --{flag}'s Secret is world-readable")
            check(pod["spec"].get("securityContext", {}).get("fsGroup") is not None or
                  secret.get("defaultMode", 0o644) & 0o044,
                  f"{where} --{flag}'s Secret is not readable by the non-root user")
    grace = seconds(flags.get("shutdown_grace", "30s"))
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre = int(pre_stop[-1]) if pre_stop[:1] == ["sleep"] else 0
    tgps = pod["spec"].get("terminationGracePeriodSeconds", 30)
    check(grace is not None and tgps >= grace + pre, f"{where} terminationGracePeriodSeconds {tgps} < {pre}+{grace}")
    live = c.get("livenessProbe", {})
    check(live.get("periodSeconds", 10) * live.get("failureThreshold", 3) > grace,
          f"{where} liveness would kill a draining pod before --shutdown_grace")
    check(pod["spec"].get("securityContext", {}).get("runAsNonRoot") is True, f"{where} not runAsNonRoot")
    ann = pod["metadata"].get("annotations", {})
    check(ann.get("prometheus.io/scrape") == "true" and int(ann.get("prometheus.io/port", 0)) == ports.get("metrics"),
          f"{where} prometheus.io annotations do not point at the metrics port")

    svcs = by_kind.get("Service", [])
    if check(len(svcs) == 1, f"{where} expected one Service"):
        s = svcs[0]["spec"]
        check(s.get("clusterIP") == "None", f"{where} Service is not headless")
        check(selects(s["selector"], pod_labels), f"{where} Service selects no attnd pod")
        check({p["name"]: p["targetPort"] for p in s["ports"]} == {"grpc": "grpc", "metrics": "metrics"},
              f"{where} Service ports {s['ports']}")
    pdbs = by_kind.get("PodDisruptionBudget", [])
    if check(len(pdbs) == 1, f"{where} expected one PodDisruptionBudget"):
        check(selects(pdbs[0]["spec"]["selector"]["matchLabels"], pod_labels), f"{where} PDB selects no pod")
        check(pdbs[0]["spec"].get("maxUnavailable") == 1 or pdbs[0]["spec"].get("minAvailable", 0) < spec["replicas"],
              f"{where} PDB would block every eviction")
    for sm in by_kind.get("ServiceMonitor", []):
        check(selects(sm["spec"]["selector"]["matchLabels"], svcs[0]["metadata"]["labels"]),
              f"{where} ServiceMonitor selects no Service")
        check([e["port"] for e in sm["spec"]["endpoints"]] == ["metrics"], f"{where} ServiceMonitor port")
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        check(ref["kind"] == "Deployment" and ref["name"] == dep["metadata"]["name"], f"{where} HPA target {ref}")
        for m in hpa["spec"]["metrics"]:
            if m["type"] == "Pods":
                metric = m["pods"]["metric"]["name"]
                check(metric in exported, f"{where} HPA metric {metric} is not one attnd exports")
        check(hpa["spec"]["minReplicas"] <= spec["replicas"] <= hpa["spec"]["maxReplicas"], f"{where} HPA range")
    return by_kind


def main():
    root = sys.argv[1]
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        print("SKIP: no kubectl (kubectl kustomize renders the overlays)")
        return 77
    version = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True)
    kustomize = json.loads(version.stdout or "{}").get("kustomizeVersion", "v0")
    if int(re.sub(r"\D", "", kustomize.split(".")[0]) or 0) < 4:
        print(f"SKIP: kubectl's kustomize {kustomize} is older than v4")
        return 77
    main_cc = open(os.path.join(root, "server/service/main.cc")).read()
    attnd_flags = set(re.findall(r"ABSL_FLAG\([^,]+,\s*(\w+)", main_cc))
    sources = "".join(open(os.path.join(root, "server/service", f)).read()
                      for f in ("attention_server.cc", "service_metrics.cc"))
    exported = set(re.findall(r'"(attnd_\w+)"', sources))
    overlays_dir = os.path.join(root, "deploy/k8s/overlays")
    overlays = sorted(os.listdir(overlays_dir))
    check(len(overlays) >= 3 and "tls" in overlays, f"overlays: {overlays}")
    kinds = {}
    for name in overlays:
        r = subprocess.run([kubectl, "kustomize", os.path.join(overlays_dir, name)], capture_output=True, text=True)
        if not check(r.returncode == 0 and not r.stderr.strip(), f"[{name}] kubectl kustomize: {r.stderr}"):
            continue
        objs = [o for o in yaml.safe_load_all(r.stdout) if o]
        kinds[name] = sorted({o["kind"] for o in objs})
        check_overlay(name, objs, attnd_flags, exported)
    for name, k in kinds.items():
        print(f"{name}: {', '.join(k)}")
    for f in FAILURES:
        print("FAIL:", f)
    print(f"{0 if FAILURES else 1} passed, {1 if FAILURES else 0} failed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
