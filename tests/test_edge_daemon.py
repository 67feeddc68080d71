"""Real clients (curl, the Python SDKs, Node) through the real edge and the real daemon.

Each client runs in its own working directory (git repos, .haltonrc, HALTON_PROJECT, proxy
credentials, nothing); the rows the daemon writes must carry the tool, project and tier the
edge resolved.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fixtures_daemon import DaemonHandle, sim_config, start_daemon
from fixtures_edge import (
    EdgeHandle,
    client_env,
    git_init,
    run_curl,
    run_node,
    run_python_sdk,
    start_edge,
    trust_bundle,
)
from hmtest import wait_until

from halton_meter.sim import ProviderSim

CURL_BODY = (
    '{"model":"claude-haiku-4-5","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'
)
CURL_ARGS = (
    "-X", "POST", "-H", "x-api-key: sk-ant-curl", "-H", "anthropic-version: 2023-06-01",
    "-H", "content-type: application/json", "--data", CURL_BODY,
)  # fmt: skip
MESSAGES = "https://api.anthropic.com/v1/messages"
PLAIN_LLM = "llm.internal"  # an OpenAI-compatible server on plain http, listed in [capture] hosts


@dataclass
class Stack:
    base: Path
    home: Path
    sim: ProviderSim
    daemon: DaemonHandle
    edge: EdgeHandle
    bundle: Path
    scan_root: Path

    def env(self, proxy: str | None = None, **extra: str) -> dict[str, str]:
        return client_env(self.home, proxy or self.edge.url, self.bundle, **extra)

    def workdir(self, name: str) -> Path:
        path = self.base / "work" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def one_row(self, do: Any) -> dict[str, Any]:
        mark = self.daemon.mark()
        result = do()
        assert result.returncode == 0, (result.stdout, result.stderr, self.edge.logs()[-3000:])
        rows = self.daemon.wait_rows(1, since=mark)
        assert len(rows) == 1, rows
        return rows[0]

    def restart_edge(self) -> None:
        port = self.edge.port
        assert self.edge.stop() == 0
        self.edge = start_edge(self.home, port=port, daemon_port=self.daemon.port)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("edge-stack")
    scan_root = base / "scan"
    scan_root.mkdir()
    sim = ProviderSim(base / "sim").start(http_port=0)
    home = base / "hm"
    text = sim_config(
        sim,
        extra_toml=(
            f'[attribution]\nscan_roots = ["{scan_root}"]\n[capture]\nhosts = ["{PLAIN_LLM}"]\n'
        ),
        resolve_extra={
            "example.com:80": f"127.0.0.1:{sim.http_port}",
            f"{PLAIN_LLM}:80": f"127.0.0.1:{sim.http_port}",
        },
    )
    try:
        daemon = start_daemon(home, sim, config_text=text)
        try:
            edge = start_edge(home, daemon_port=daemon.port)
            bundle = trust_bundle(base / "bundle.pem", sim.ca_path, daemon.ca_cert)
            s = Stack(base, home, sim, daemon, edge, bundle, scan_root)
            try:
                yield s
            finally:
                s.edge.stop()
        finally:
            daemon.stop()
    finally:
        sim.stop()


def test_curl_in_a_git_repo_is_attributed_to_the_repo(stack: Stack) -> None:
    repo = git_init(stack.workdir("repos") / "acme-api")
    sub = repo / "src" / "deep"
    sub.mkdir(parents=True)
    row = stack.one_row(lambda: run_curl(MESSAGES, cwd=sub, env=stack.env(), args=CURL_ARGS))
    assert (row["tool"], row["project"], row["tier"]) == ("curl", "acme-api", "git")
    assert row["client_cwd"] == str(sub)
    assert row["client_pid"] and row["provider"] == "anthropic"
    hits = stack.edge.events("attribution.tier_hit")
    assert any(h["tier"] == "git" and h["project"] == "acme-api" for h in hits)


def test_python_sdk_under_a_haltonrc(stack: Stack) -> None:
    root = stack.workdir("rc-project")
    (root / ".haltonrc").write_text("# team project\nproject: billing-svc\n")
    git_init(root / "vendored-repo")  # .haltonrc above wins over nothing; git below is not ours
    cwd = root / "scripts"
    cwd.mkdir()
    row = stack.one_row(lambda: run_python_sdk("anthropic", cwd=cwd, env=stack.env()))
    assert (row["tool"], row["project"], row["tier"]) == ("python", "billing-svc", "haltonrc")
    assert row["input_tokens"] is not None and row["status"] == 200


def test_openai_sdk_with_halton_project_is_explicit(stack: Stack) -> None:
    repo = git_init(stack.workdir("some-repo"))
    env = stack.env(HALTON_PROJECT="launch-2026")
    row = stack.one_row(lambda: run_python_sdk("openai", cwd=repo, env=env))
    # HALTON_PROJECT beats the git root the client runs in
    assert (row["tool"], row["project"], row["tier"]) == ("python", "launch-2026", "explicit")
    assert row["provider"] == "openai"


def test_node_with_proxy_credentials_is_explicit_and_password_dropped(stack: Stack) -> None:
    cwd = stack.workdir("node-plain")
    proxy = f"http://node-proj:hunter2secret@127.0.0.1:{stack.edge.port}"
    row = stack.one_row(lambda: run_node(cwd=cwd, env=stack.env(proxy)))
    assert (row["tool"], row["project"], row["tier"]) == ("node", "node-proj", "explicit")
    # the password is never stored: not in the database, registry, stats or logs
    for path in stack.home.iterdir():
        if path.is_file():
            assert b"hunter2secret" not in path.read_bytes(), path
    encoded = base64.b64encode(b"node-proj:hunter2secret")
    assert encoded not in stack.daemon.db.read_bytes()


def test_client_with_no_clues_is_misc(stack: Stack) -> None:
    cwd = stack.workdir("zz-nothing-here")
    row = stack.one_row(lambda: run_curl(MESSAGES, cwd=cwd, env=stack.env(), args=CURL_ARGS))
    assert (row["tool"], row["project"], row["tier"]) == ("curl", "misc", "misc")


def test_registry_survives_an_edge_restart(stack: Stack) -> None:
    cwd = stack.workdir("no-git-dir")
    first = stack.one_row(
        lambda: run_curl(MESSAGES, cwd=cwd, env=stack.env(HALTON_PROJECT="ledger"), args=CURL_ARGS)
    )
    assert (first["project"], first["tier"]) == ("ledger", "explicit")
    registry = stack.home / "project-registry.json"
    wait_until(lambda: "ledger" in registry.read_text(), what="registry written")
    stack.restart_edge()
    # The first request after the restart, with no explicit hint, finds the registered path.
    sub = cwd / "nested"
    sub.mkdir()
    row = stack.one_row(lambda: run_curl(MESSAGES, cwd=sub, env=stack.env(), args=CURL_ARGS))
    assert (row["project"], row["tier"]) == ("ledger", "4b")


def test_lenient_scan_warms_the_registry(stack: Stack) -> None:
    (stack.scan_root / "Orchard").mkdir()
    # The client runs from a same-named folder elsewhere (an IDE's scratch copy, say).
    cwd = stack.workdir("elsewhere") / "orchard"
    cwd.mkdir()
    row = stack.one_row(lambda: run_curl(MESSAGES, cwd=cwd, env=stack.env(), args=CURL_ARGS))
    assert (row["project"], row["tier"]) == ("Orchard", "4b_lenient")
    again = stack.one_row(lambda: run_curl(MESSAGES, cwd=cwd, env=stack.env(), args=CURL_ARGS))
    assert (again["project"], again["tier"]) == ("Orchard", "4b")
    wait_until(
        lambda: stack.edge.stats()["tier_hits"].get("4b_lenient", 0) >= 1,
        what="per-tier counter persisted",
    )


def test_non_llm_https_host_is_tunnelled_with_the_origin_certificate(stack: Stack) -> None:
    cwd = stack.workdir("tunnel")
    mark = stack.daemon.mark()
    before = wait_until(lambda: stack.edge.stats())
    # Trusting only the simulator's CA: a metered (re-signed) connection would fail.
    env = stack.env()
    env.update(CURL_CA_BUNDLE=str(stack.sim.ca_path), SSL_CERT_FILE=str(stack.sim.ca_path))
    result = run_curl("https://example.com/page", cwd=cwd, env=env, args=("-w", "%{http_code}"))
    assert result.returncode == 0, result.stderr
    assert "Hello from example.com" in result.stdout and result.stdout.endswith("200")
    assert stack.daemon.rows_since(mark) == []
    after = wait_until(
        lambda: (s := stack.edge.stats())["connections_total"] > before["connections_total"] and s
    )
    # never handed to the daemon, and not counted as unmetered LLM traffic either
    assert after["metered_total"] == before["metered_total"]
    assert after["unmetered_total"] == before["unmetered_total"]


def test_plain_http_is_forwarded_with_keep_alive(stack: Stack) -> None:
    cwd = stack.workdir("plain-http")
    before = len(stack.sim.requests)
    result = run_curl(
        "http://example.com/two",
        cwd=cwd,
        env=stack.env(),
        args=("-v", "http://example.com/one"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Hello from example.com") == 2
    assert "Re-using existing connection" in result.stderr
    paths = [r.path for r in stack.sim.requests[before:]]
    assert paths == ["/one", "/two"]  # origin-form on the wire


def test_plain_http_llm_host_is_metered_with_attribution(stack: Stack) -> None:
    repo = git_init(stack.workdir("plain-llm-repo"))
    body = '{"model":"llama-3-70b","messages":[{"role":"user","content":"hi"}]}'
    row = stack.one_row(
        lambda: run_curl(
            f"http://{PLAIN_LLM}/v1/chat/completions",
            cwd=repo,
            env=stack.env(),
            args=("-H", "authorization: Bearer sk-local", "-H", "content-type: application/json",
                  "--data", body),
        )
    )  # fmt: skip
    assert (row["tool"], row["project"], row["tier"]) == ("curl", "plain-llm-repo", "git")
    assert row["host"] == PLAIN_LLM and row["model"] == "llama-3-70b"
    # the hand-over header never reaches the origin
    rec = stack.sim.requests[-1]
    assert rec.header("x-halton-attribution") is None and rec.path == "/v1/chat/completions"
