#!/usr/bin/python3
"""Static checks of deploy/docker (no Docker engine runs in CI), plus a real run of its staging step.

  check_docker.py REPO_ROOT BUILD_BIN_DIR

- The Dockerfile has a CUDA 13 devel build stage and the matching runtime stage; the build stage
  runs scripts/build.sh (the README's and CI's build) for targets that CMake defines, and stages
  the same programs; the runtime stage runs as a non-root user with attnd as entrypoint, listens
  on 0.0.0.0:50051, and passes only flags that attnd defines.
- compose.yaml reserves an NVIDIA GPU, uses that Dockerfile, and waits longer than --shutdown_grace.
- The .dockerignore keeps build trees and .git out of the context.
- stage_runtime.sh really stages the programs from BUILD_BIN_DIR with their libraries, and the
  staged attnd starts with only the staged libraries added to the search path.
"""
import os
import re
import shlex
import subprocess
import sys
import tempfile

import yaml  # Debian's python3-yaml

FAILURES = []


def check(cond, msg):
    if not cond:
        FAILURES.append(msg)
    return cond


def cmake_targets(root):
    targets = set()
    for d, _, files in os.walk(root):
        if "/build" in d or "/.git" in d:
            continue
        if "CMakeLists.txt" in files:
            text = open(os.path.join(d, "CMakeLists.txt")).read()
            targets.update(re.findall(r"add_executable\(\s*(\w+)", text))
    return targets


def attnd_flags(root):
    text = open(os.path.join(root, "server/service/main.cc")).read()
    return set(re.findall(r"ABSL_FLAG\([^,]+,\s*(\w+)", text))


def flag_names(args):
    return {a[2:].split("=", 1)[0] for a in args if a.startswith("--")}


def parse_dockerfile(path):
    """[(stage_name, base, [(instruction, args)])], with line continuations joined."""
    text = open(path).read().replace("\\\n", " ")
    args, stages = {}, []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        if instr == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif instr == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            base = re.sub(r"\$\{(\w+)\}", lambda g: args.get(g.group(1), ""), m.group(1))
            stages.append((m.group(2), base, []))
        elif stages:
            stages[-1][2].append((instr, rest.strip()))
    return args, stages


def main():
    root, bin_dir = sys.argv[1], sys.argv[2]
    docker = os.path.join(root, "deploy/docker")
    targets, flags = cmake_targets(root), attnd_flags(root)
    args, stages = parse_dockerfile(os.path.join(docker, "Dockerfile"))

    check(args.get("CUDA_VERSION", "").startswith("13.0."), f"CUDA_VERSION {args.get('CUDA_VERSION')} is not 13.0.x")
    check(len(stages) == 2, f"expected 2 stages, got {len(stages)}")
    (build_name, build_base, build), (_, run_base, runtime) = stages[0], stages[-1]
    check(re.fullmatch(r"nvidia/cuda:13\.0\.\d+-devel-ubuntu24\.04", build_base), f"build base {build_base}")
    check(run_base == build_base.replace("-devel-", "-runtime-"), f"runtime base {run_base} != build's runtime")

    run = " ".join(a for i, a in build if i == "RUN")
    m = re.search(r"bash scripts/build\.sh((?:\s+\w+)+)", run)
    if check(m, "build stage does not run scripts/build.sh with targets"):
        built = m.group(1).split()
        check(set(built) <= targets, f"build.sh targets {built} not all CMake targets ({sorted(targets)})")
        s = re.search(r"stage_runtime\.sh\s+(\S+)\s+(\S+)((?:\s+\w+)+)", run)
        if check(s, "build stage does not run stage_runtime.sh"):
            check(s.group(3).split() == built, "stage_runtime.sh stages other programs than build.sh builds")
    check("ATTND_DEPS=build" in run, "build stage does not skip test-only dependencies")
    check("ATTND_DEPS" in open(os.path.join(root, "scripts/install_deps.sh")).read(),
          "install_deps.sh ignores ATTND_DEPS")
    check("install_deps.sh" in open(os.path.join(root, "scripts/build.sh")).read(), "build.sh skips install_deps")

    copies = [a for i, a in runtime if i == "COPY"]
    check(copies and all(c.startswith(f"--from={build_name} /stage/") for c in copies),
          f"runtime stage copies more than the staged programs: {copies}")
    users = [a for i, a in runtime if i == "USER"]
    check(users and users[-1].split(":")[0] not in ("0", "root"), f"runtime user {users}")
    entry = [a for i, a in runtime if i == "ENTRYPOINT"]
    check(entry and yaml.safe_load(entry[-1]) == ["/usr/local/bin/attnd"], f"entrypoint {entry}")
    cmd = yaml.safe_load([a for i, a in runtime if i == "CMD"][-1])
    check("--listen=0.0.0.0:50051" in cmd, f"CMD {cmd} does not listen on 0.0.0.0:50051")
    check(flag_names(cmd) <= flags, f"CMD flags {flag_names(cmd) - flags} are not attnd flags")
    exposed = set(" ".join(a for i, a in runtime if i == "EXPOSE").split())
    check({"50051", "9090"} <= exposed and "--metrics_listen=0.0.0.0:9090" in cmd, f"EXPOSE {exposed}")

    compose = yaml.safe_load(open(os.path.join(docker, "compose.yaml")))
    svc = compose["services"]["attnd"]
    check(os.path.normpath(os.path.join(docker, svc["build"]["context"], svc["build"]["dockerfile"]))
          == os.path.normpath(os.path.join(docker, "Dockerfile")), "compose builds another Dockerfile")
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    check(any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices),
          "compose reserves no NVIDIA GPU")
    check(flag_names(svc["command"]) <= flags, f"compose flags {flag_names(svc['command']) - flags}")
    grace = [int(a.split("=")[1].rstrip("s")) for a in svc["command"] if a.startswith("--shutdown_grace=")]
    check(grace and int(svc["stop_grace_period"].rstrip("s")) > grace[0], "stop_grace_period <= shutdown_grace")

    ignore = open(os.path.join(docker, "Dockerfile.dockerignore")).read().split()
    check({".git", "build", "build-*"} <= set(ignore), f"dockerignore {ignore}")

    with tempfile.TemporaryDirectory() as stage:
        progs = m.group(1).split() if m else ["attnd"]
        r = subprocess.run(["bash", os.path.join(docker, "stage_runtime.sh"), bin_dir, stage, *progs],
                           capture_output=True, text=True)
        if check(r.returncode == 0, f"stage_runtime.sh failed: {r.stderr}"):
            libs = os.listdir(os.path.join(stage, "usr/local/lib/attnd"))
            check(any(l.startswith("libgrpc++.so") for l in libs), f"gRPC not staged: {libs}")
            check(not any(l.startswith(("libc.so", "libcuda.so")) for l in libs), "libc/libcuda staged")
            env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(stage, "usr/local/lib/attnd"))
            v = subprocess.run([os.path.join(stage, "usr/local/bin/attnd"), "--version"], env=env,
                               capture_output=True, text=True, timeout=30)
            check(v.returncode == 0 and "attnd" in v.stdout, f"staged attnd --version: {v.stdout}{v.stderr}")

    for f in FAILURES:
        print("FAIL:", f)
    print(f"{0 if FAILURES else 1} passed, {1 if FAILURES else 0} failed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
