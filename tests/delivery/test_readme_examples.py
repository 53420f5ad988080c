"""The README's curl examples, run as written against a served app, give the output it shows.

Every ```sh / ```bash block of README.md is read; its curl commands run in order, from the
repository root, against `fanfinity serve` started as `make run` starts it (the local producer
key), with only the address changed to a free port. When a block is followed directly by an
```http, ```json or ```text block, that is the output it promises:

- http: the status, and the value of every header shown (except per-request ones such as
  ``x-request-id``);
- json: the same keys at every level, the same values except timestamps of this run, measured
  latencies and ``"..."`` placeholders;
- text (a live stream): the first and last ``metrics`` frames carry the fields shown, and the
  stream ends with the event shown last.

A curl with ``-N`` (a stream) runs alongside the commands after it in its block, as in a second
terminal. Commands aimed at other ports (the compose stack's Prometheus, Grafana, aggregator)
are skipped with the reason: they need Docker and MongoDB.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability.service import ServiceProcess, start_service

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCUMENTED_BASES = ("http://127.0.0.1:8000", "http://localhost:8000")
LOCAL_KEY = "local-dev-producer-key"  # what `make run` sets (Makefile)
SHELL_BLOCKS = {"sh", "bash", "shell", "console"}
SAMPLE_BLOCKS = {"http", "json", "text"}
STATUS_MARK = "\n<<readme-test status=%{http_code}>>"
STATUS_RE = re.compile(r"\n<<readme-test status=(\d{3})>>$")
# Values that differ on every run: when this body was made, and latencies measured just now.
VOLATILE_KEYS = {"asOf", "generatedAt", "p50", "p95", "p99"}  # timings; their `samples` are not
VOLATILE_HEADERS = {
    "date",
    "x-request-id",
    "content-length",
    "etag",  # a hash of the body, whose asOf is this run's
    "ratelimit-remaining",
    "ratelimit-reset",
}
READ_RETRY_S = 10.0  # a read may run before the aggregator has counted the posts above it
STREAM_DEADLINE_S = 20.0
CURL_MAX_TIME_S = "30"


@dataclass
class Block:
    lang: str
    line: int  # 1-based line of the opening fence
    text: str


@dataclass
class Example:
    """The curl commands of one shell block, and the sample output that follows it, if any."""

    line: int
    commands: list[str]
    sample: Block | None


@dataclass
class CurlResult:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""


def fenced_blocks(markdown: str) -> list[Block]:
    blocks: list[Block] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        opening = re.fullmatch(r"```(\w*)\s*", lines[i])
        if opening is None:
            i += 1
            continue
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        blocks.append(Block(opening.group(1).lower(), start + 1, "\n".join(body)))
        i += 1
    return blocks


def shell_commands(text: str) -> list[str]:
    """Complete commands: backslash continuations and quotes spanning lines joined, comments out."""
    commands: list[str] = []
    pending: list[str] = []
    for raw in text.splitlines():
        line = raw.removeprefix("$ ")
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending.append(line)
        joined = "\n".join(pending)
        if joined.endswith("\\"):
            continue
        try:
            shlex.split(joined, comments=True)
        except ValueError:  # a quote still open: the command goes on on the next line
            continue
        commands.append(joined)
        pending = []
    return commands


def readme_examples() -> list[Example]:
    blocks = fenced_blocks(README.read_text(encoding="utf-8"))
    lines = README.read_text(encoding="utf-8").splitlines()
    examples = []
    for index, block in enumerate(blocks):
        if block.lang not in SHELL_BLOCKS:
            continue
        curls = [
            c for c in shell_commands(block.text) if shlex.split(c, comments=True)[0] == "curl"
        ]
        if not curls:
            continue
        sample = None
        if index + 1 < len(blocks) and blocks[index + 1].lang in SAMPLE_BLOCKS:
            following = blocks[index + 1]
            closing = block.line + block.text.count("\n") + 2  # 1-based line of the closing fence
            between = lines[closing : following.line - 1]
            if not any(line.strip() for line in between):
                sample = following
        examples.append(Example(block.line, curls, sample))
    return examples


EXAMPLES = readme_examples()


def other_target(command: str) -> str | None:
    """Why a command cannot run here, or None when it targets the documented API address."""
    urls = re.findall(r"https?://[^\s'\"]+", command)
    if not urls:
        return "no URL in the command"
    for url in urls:
        if not url.startswith(DOCUMENTED_BASES):
            return f"targets {url}: needs the docker compose stack (Docker and MongoDB)"
    return None


def has_shell_operators(command: str) -> bool:
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.commenters = "#"
    return any(token and set(token) <= set("|&;<>()") for token in lexer)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """`make run`'s service (the local producer key, default caches) on a free port."""
    log = tmp_path_factory.mktemp("readme") / "serve.log"
    service = start_service(log, FANFINITY_API_KEYS=LOCAL_KEY, FANFINITY_METRICS_CACHE_MS="250")
    try:
        deadline = time.monotonic() + 30
        while True:
            if service.process.poll() is not None:
                pytest.fail(
                    f"the service exited with {service.process.returncode}:\n{service.log_tail()}"
                )
            try:
                if httpx.get(service.base_url + "/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the service was not ready in 30 s:\n{service.log_tail()}")
            time.sleep(0.05)
        yield service
    finally:
        service.kill()


def curl_argv(command: str, base_url: str) -> list[str]:
    argv = [
        token.replace(DOCUMENTED_BASES[0], base_url).replace(DOCUMENTED_BASES[1], base_url)
        for token in shlex.split(command.replace("\\\n", " "), comments=True)  # continuations
    ]
    return [*argv, "--show-error", "--max-time", CURL_MAX_TIME_S, "--write-out", STATUS_MARK]


def parse_curl_output(argv: list[str], output: str) -> CurlResult:
    mark = STATUS_RE.search(output)
    assert mark is not None, f"curl printed no status: {output[-500:]!r}"
    result = CurlResult(status=int(mark.group(1)), body=output[: mark.start()])
    if "-i" in argv or "--include" in argv:
        head, _, body = result.body.partition("\n\n")  # text mode: \r\n arrives as \n
        for line in head.splitlines()[1:]:
            name, _, value = line.partition(":")
            result.headers[name.strip().lower()] = value.strip()
        result.body = body
    return result


def run_curl(argv: list[str]) -> CurlResult:
    completed = subprocess.run(  # noqa: S603 - curl with the README's own arguments
        argv, cwd=ROOT, capture_output=True, text=True, timeout=float(CURL_MAX_TIME_S) + 5
    )
    assert completed.returncode == 0, f"{shlex.join(argv)}\n{completed.stderr}"
    return parse_curl_output(argv, completed.stdout)


# ------------------------------------------------------------------ comparisons with the samples
def json_differences(sample: Any, actual: Any, where: str = "$") -> list[str]:
    if sample == "...":
        return []
    if isinstance(sample, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected an object, got {actual!r}"]
        if set(sample) != set(actual):
            return [f"{where}: keys {sorted(sample)} in the README, {sorted(actual)} served"]
        return [
            difference
            for key in sample
            if key not in VOLATILE_KEYS
            for difference in json_differences(sample[key], actual[key], f"{where}.{key}")
        ]
    if isinstance(sample, list):
        if not isinstance(actual, list) or len(sample) != len(actual):
            return [f"{where}: {len(sample)} items in the README, served {actual!r}"]
        return [
            difference
            for i, (s, a) in enumerate(zip(sample, actual, strict=True))
            for difference in json_differences(s, a, f"{where}[{i}]")
        ]
    return [] if sample == actual else [f"{where}: {sample!r} in the README, {actual!r} served"]


def http_differences(sample: str, result: CurlResult) -> list[str]:
    head, _, body = sample.partition("\n\n")
    status_line, *header_lines = head.splitlines()
    differences = []
    status = int(status_line.split()[1])
    if status != result.status:
        differences.append(f"status {status} in the README, {result.status} served")
    for line in header_lines:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name not in result.headers:
            differences.append(f"header {name} missing")
        elif name not in VOLATILE_HEADERS and result.headers[name] != value.strip():
            differences.append(f"{name}: {value.strip()!r} in the README, {result.headers[name]!r}")
    if body.strip():
        differences += json_differences(json.loads(body), json.loads(result.body))
    return differences


def stream_frames(text: str) -> list[dict[str, str]]:
    frames = []
    for chunk in re.split(r"\n\s*\n", text.strip()):
        frame = {}
        for line in chunk.splitlines():
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            frame[name] = value.strip()
        if frame:
            frames.append(frame)
    return frames


def shown_fields(data: str) -> dict[str, str]:
    return dict(re.findall(r'"(\w+)":\s*("[^"]*"|-?\d+(?:\.\d+)?|true|false|null)', data))


def stream_differences(sample: str, output: str) -> list[str]:
    promised, served = stream_frames(sample), stream_frames(output)
    differences = []
    for key in ("retry",):
        want = next((f[key] for f in promised if key in f), None)
        got = next((f[key] for f in served if key in f), None)
        if want != got:
            differences.append(f"{key}: {want!r} in the README, {got!r} served")
    promised_metrics = [f for f in promised if f.get("event") == "metrics"]
    served_metrics = [f for f in served if f.get("event") == "metrics"]
    if not served_metrics:
        return [*differences, f"no metrics frame served: {output[:300]!r}"]
    for label, want, got in (
        ("first", promised_metrics[0], served_metrics[0]),
        ("last", promised_metrics[-1], served_metrics[-1]),
    ):
        got_fields = shown_fields(got.get("data", ""))
        for name, value in shown_fields(want.get("data", "")).items():
            if got_fields.get(name) != value:
                differences.append(
                    f"{label} frame {name}: {value} in the README, {got_fields.get(name)}"
                )
    if promised[-1].get("event") != served[-1].get("event"):
        differences.append(
            f"last event {promised[-1].get('event')!r}, served {served[-1].get('event')!r}"
        )
    return differences


def sample_differences(sample: Block, result: CurlResult, raw_output: str) -> list[str]:
    if sample.lang == "http":
        return http_differences(sample.text, result)
    if sample.lang == "json":
        return json_differences(json.loads(sample.text), json.loads(result.body))
    return stream_differences(sample.text, raw_output)


# ------------------------------------------------------------------------------------- the test
pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def test_the_readme_has_curl_examples_with_samples() -> None:
    """The parser finds the examples (a README rewrite must not silently disable this file)."""
    assert len(EXAMPLES) >= 4
    assert sum(example.sample is not None for example in EXAMPLES) >= 4
    assert any("@examples/" in command for example in EXAMPLES for command in example.commands)


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"README.md:{e.line}" for e in EXAMPLES])
def test_a_readme_example_runs_as_written(served: ServiceProcess, example: Example) -> None:
    skipped = [reason for command in example.commands if (reason := other_target(command))]
    if len(skipped) == len(example.commands):
        pytest.skip(f"README.md:{example.line}: {skipped[0]}")
    stream: tuple[list[str], subprocess.Popen[str]] | None = None
    last: tuple[list[str], CurlResult, str] | None = None
    for command in example.commands:
        if other_target(command):
            continue
        if has_shell_operators(command):
            shell = command
            for base in DOCUMENTED_BASES:
                shell = shell.replace(base, served.base_url)
            completed = subprocess.run(  # noqa: S603 - the README's own command line
                ["bash", "-o", "pipefail", "-c", shell],  # noqa: S607
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert completed.returncode == 0, f"{command}\n{completed.stderr}"
            continue
        argv = curl_argv(command, served.base_url)
        if "-N" in argv or "--no-buffer" in argv:
            process = subprocess.Popen(  # noqa: S603 - curl with the README's own arguments
                argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            stream = (argv, process)
            time.sleep(1.0)  # connected and served the current metrics, as a reader would be
            continue
        result = run_curl(argv)
        if (
            example.sample is not None
            and example.sample.lang in ("json", "http")
            and stream is None
        ):
            result = _until_it_matches(argv, result, example.sample)
        assert result.status < 500, f"{command}\n{result.status} {result.body}"
        last = (argv, result, result.body)
    if stream is not None:
        argv, process = stream
        try:
            output, errors = process.communicate(timeout=STREAM_DEADLINE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            output, errors = process.communicate()
        assert process.returncode == 0, f"{shlex.join(argv)}\n{errors}"
        streamed = parse_curl_output(argv, output)
        last = (argv, streamed, streamed.body)
    if example.sample is not None and last is not None:
        _, result, raw = last
        differences = sample_differences(example.sample, result, raw)
        assert not differences, (
            f"README.md:{example.sample.line} no longer matches what the service answers:\n"
            + "\n".join(differences)
        )


def _until_it_matches(argv: list[str], result: CurlResult, sample: Block) -> CurlResult:
    """A read (no body sent) is retried until the aggregator has counted what was posted."""
    if any(flag in argv for flag in ("-d", "--data", "--data-binary", "-X")):
        return result
    deadline = time.monotonic() + READ_RETRY_S
    while sample_differences(sample, result, result.body) and time.monotonic() < deadline:
        time.sleep(0.2)
        result = run_curl(argv)
    return result
