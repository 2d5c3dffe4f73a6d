"""`grainclip describe-classes`: the real `openai` describer against a local OpenAI-compatible HTTP endpoint.

No LLM weights are reachable here, so the endpoint is a small HTTP server that answers chat completions the
way a served model would (JSON with a caption and descriptions derived from the alt-text in the prompt);
everything on grainclip's side (config, describer plugin, openai client, prompt, parsing, the JSON written)
is the real code path.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from typer.testing import CliRunner

from grainclip.cli import app
from grainclip.evaluate.datasets import read_descriptors

ALT_TEXTS: list[str] = []  # what the endpoint was asked about


class ChatCompletions(BaseHTTPRequestHandler):
    """POST /v1/chat/completions -> descriptors of the class named in the prompt's alt-text."""

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = request["messages"][0]["content"]
        prompt = prompt if isinstance(prompt, str) else " ".join(part.get("text", "") for part in prompt)
        alt_text, name = re.search(r'alt-text: "(a photo of an? ([^"]+))"', prompt).groups()
        ALT_TEXTS.append(alt_text)
        if name == "unknowable":
            content = "I cannot help with that."
        else:
            content = json.dumps(
                {"caption": f"a {name} on grass", "descriptions": [f"{name} head", f"long {name} tail"]}
            )
        body = json.dumps(
            {
                "id": "cmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": request["model"],
                "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ChatCompletions)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _describer_config(tmp_path, base_url) -> str:
    path = tmp_path / "describer.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "openai",
                "model": "served-model",
                "multimodal": False,
                "options": {"base_url": base_url, "api_key_env": None, "max_retries": 0},
            }
        )
    )
    return str(path)


def test_describe_classes_writes_descriptors_the_evaluator_reads(tmp_path, endpoint):
    classes = tmp_path / "classes.txt"
    classes.write_text("black_footed_albatross\ncardinal\tnorthern cardinal\n")
    out = tmp_path / "descriptors.json"
    result = CliRunner().invoke(
        app, ["describe-classes", str(classes), "--describer", _describer_config(tmp_path, endpoint), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    names = ["black footed albatross", "northern cardinal"]
    assert read_descriptors(out, names)[0] == {
        "black footed albatross": ["black footed albatross head", "long black footed albatross tail"],
        "northern cardinal": ["northern cardinal head", "long northern cardinal tail"],
    }


def test_classes_without_descriptors_fail_and_write_nothing(tmp_path, endpoint):
    classes = tmp_path / "classes.txt"
    classes.write_text("cardinal\nunknowable\n")
    out = tmp_path / "descriptors.json"
    result = CliRunner().invoke(
        app, ["describe-classes", str(classes), "--describer", _describer_config(tmp_path, endpoint), "--out", str(out)]
    )
    assert result.exit_code == 1
    assert "1 of 2 classes got no descriptors ('unknowable': unusable LLM output" in result.output
    assert "a photo of an unknowable" in ALT_TEXTS  # the article fits the class name
    assert not out.exists()
