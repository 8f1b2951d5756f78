"""`safe-serve` as a real subprocess on a loopback port: answers equal SafePipeline's (JSON and multipart, batched),
bad requests get their own 4xx naming the field, /metrics adds up, SIGTERM answers what is in flight and exits 0."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from envs.outcome_table import OutcomeTable
from serve.app import ServeSettings, create_app
from serve.cli import bind, main as serve_main
from shared.data.audio_io import load_audio
from shared.data.schema import read_manifest
from stage_a.pipeline import SafePipeline
from stage_b.chooser import PolicyChooser

ROOT = Path(__file__).resolve().parents[2]
MAX_BODY_MB = 1
TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(args: list[str], log: Path, port: int | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """`python -m serve.cli` in a subprocess, logging to `log`; yields it and its URL once /healthz answers."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "serve.cli", "--port", str(port if port is not None else 0),
                                 "--threads", "1", *args], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        deadline, url = time.monotonic() + TIMEOUT, None
        while url is None or not _healthy(url):
            assert proc.poll() is None and time.monotonic() < deadline, f"server did not start:\n{log.read_text()}"
            found = re.search(r"answering at (http://[\d.]+:\d+)/v1/answer", log.read_text())
            url = found.group(1) if found else None
            time.sleep(0.1)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def b64(path: str | Path | None) -> str | None:
    return None if path is None else base64.b64encode(Path(path).read_bytes()).decode()


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format 0.0.4, checked strictly: {'name{labels}': value}; histograms must be cumulative."""
    assert text.endswith("\n")
    label = r'[a-zA-Z_]\w*="(?:[^"\\\n]|\\.)*"'
    sample = re.compile(rf"^([a-zA-Z_:][\w:]*)(\{{{label}(?:,{label})*\}})? (\S+)$")
    types: dict[str, str] = {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types and kind in ("counter", "gauge", "histogram"), line
            types[name] = kind
            continue
        match = sample.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.group(1), match.group(2) or "", match.group(3)
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"{name} has no TYPE line before it"
        values[name + labels] = math.inf if value == "+Inf" else float(value)
    for name in (n for n, kind in types.items() if kind == "histogram"):
        buckets = [v for k, v in values.items() if k.startswith(f"{name}_bucket{{")]
        assert buckets == sorted(buckets) and buckets[-1] == values[f"{name}_count"], name
    return values


def delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def metrics(url: str) -> dict[str, float]:
    response = httpx.get(f"{url}/metrics", timeout=TIMEOUT)
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(response.text)


@pytest.fixture(scope="module")
def run_dir(table_path: Path) -> Path:
    return Path(OutcomeTable.load(table_path).provenance["checkpoint"])


@pytest.fixture(scope="module")
def pipe(run_dir: Path, policy_dir: Path) -> SafePipeline:
    return SafePipeline.from_pretrained(run_dir, policy=PolicyChooser.load(policy_dir))


@pytest.fixture(scope="module")
def rows(micro_world: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """16 test questions with their image and audio files; some clips rewritten as 44.1 kHz stereo FLAC."""
    out = tmp_path_factory.mktemp("media")
    samples = [s for s in read_manifest(micro_world / "data" / "test.jsonl") if s.image and s.audio]
    picked = samples[:: max(1, len(samples) // 16)][:16]
    assert len(picked) == 16
    rows = []
    for n, s in enumerate(picked):
        audio = s.audio
        if n % 4 == 1:
            wave = load_audio(s.audio, 44100, s.audio_start, s.audio_end)
            audio = out / f"{n}.flac"
            sf.write(audio, np.stack([wave, 0.5 * wave], axis=1), 44100, format="FLAC")
        rows.append({"question": s.question, "image": s.image, "audio": str(audio)})
    return rows


@pytest.fixture(scope="module")
def server(run_dir: Path, policy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    args = ["--bridge", str(run_dir), "--policy", str(policy_dir), "--max-batch", "16", "--max-wait-ms", "20",
            "--max-body-mb", str(MAX_BODY_MB)]
    with serve(args, log, free_port()) as (_, url):
        yield url


def offline(pipe: SafePipeline, rows: list[dict], audio: bool, k: int | str | None) -> list[dict]:
    return pipe(image=[r["image"] for r in rows], audio=[r["audio"] if audio else None for r in rows],
                question=[r["question"] for r in rows], k=[k] * len(rows))


def post_json(url: str, row: dict, audio: bool, k: int | str | None) -> dict:
    body = {"question": row["question"], "image": b64(row["image"]), "audio": b64(row["audio"]) if audio else None,
            "k": k}
    response = httpx.post(f"{url}/v1/answer", json=body, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def post_form(url: str, row: dict, audio: bool, k: int | str | None) -> dict:
    files = {"image": Path(row["image"]).read_bytes(), **({"audio": Path(row["audio"]).read_bytes()} if audio else {})}
    data = {"question": row["question"], **({"k": str(k)} if k is not None else {})}
    response = httpx.post(f"{url}/v1/answer", data=data, files=files, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def _same(served: list[dict], expected: list[dict]) -> None:
    assert [(s["answer"], s["action"]) for s in served] == [(e["answer"], e["action"]) for e in expected]
    assert [s["gflops"] for s in served] == pytest.approx([e["gflops"] for e in expected])
    assert all(s["latency_ms"] > 0 and s["batch_size"] >= 1 for s in served)


@pytest.mark.parametrize("post", [post_json, post_form], ids=["json", "multipart"])
def test_answers_equal_the_pipelines(server: str, pipe: SafePipeline, rows: list[dict], post) -> None:
    some = rows[:6]
    for audio, k in ((True, 4), (False, 4), (True, 0), (True, "auto")):
        served = [post(server, row, audio, k) for row in some]
        expected = offline(pipe, some, audio, k)
        _same(served, expected)
        assert all(s["action"]["audio"] == (audio and s["action"]["k"] > 0) for s in served)
    with_audio = [post(server, row, True, 8) for row in rows]
    without = [post(server, row, False, None) for row in rows]  # k null: the policy's call, no audio → k 0
    _same(with_audio, offline(pipe, rows, True, 8))
    _same(without, offline(pipe, rows, False, None))
    assert [r["answer"] for r in with_audio] != [r["answer"] for r in without]  # audio shows in some answer


def test_concurrent_requests_are_batched_and_equal_the_pipelines(server: str, pipe: SafePipeline,
                                                                 rows: list[dict]) -> None:
    before = metrics(server)
    audio = [n % 3 != 0 for n in range(len(rows))]  # with and without audio, k 4 and 8: one generate call per batch
    ks = [4 if n % 2 else 8 for n in range(len(rows))]

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            return await asyncio.gather(*(client.post(f"{server}/v1/answer", json={
                "question": r["question"], "image": b64(r["image"]), "audio": b64(r["audio"]) if a else None, "k": k})
                for r, a, k in zip(rows, audio, ks)))

    responses = asyncio.run(send_all())
    assert [r.status_code for r in responses] == [200] * len(rows)
    served = [r.json() for r in responses]
    expected = pipe(image=[r["image"] for r in rows], audio=[r["audio"] if a else None for r, a in zip(rows, audio)],
                    question=[r["question"] for r in rows], k=ks)
    _same(served, expected)
    sizes = [s["batch_size"] for s in served]
    assert max(sizes) > 1, sizes
    assert all(sizes.count(size) % size == 0 for size in sizes), sizes  # a call of b requests: b responses say b
    after = metrics(server)
    assert delta(before, after, "safe_batch_size_sum") == len(rows)
    assert delta(before, after, "safe_batch_size_count") == pytest.approx(sum(1 / size for size in sizes))


def _wav(wave: np.ndarray, rate: int, subtype: str = "FLOAT") -> str:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="WAV", subtype=subtype)
    return base64.b64encode(buffer.getvalue()).decode()


GOOD_WAVE = np.sin(np.linspace(0, 400, 16000)).astype(np.float32)
BAD_JSON = [  # (JSON body, status, field, words in the message)
    ({"question": "what sound?", "audio": base64.b64encode(b"RIFF not a wav file").decode()}, 422, "audio",
     "not a readable audio file"),
    ({"question": "what sound?", "audio": _wav(np.where(np.arange(16000) == 5, np.nan, GOOD_WAVE), 16000)}, 422,
     "audio", "NaN"),
    ({"question": "what sound?", "audio": _wav(GOOD_WAVE, 2000)}, 422, "audio", "sample rate 2000 Hz"),
    ({"question": "what sound?", "audio": _wav(GOOD_WAVE, 44101)}, 422, "audio", "sample rate 44101 Hz"),
    ({"question": "what color?", "image": base64.b64encode(b"GIF89a garbage").decode()}, 422, "image",
     "14 bytes in no image format"),
    ({"question": "what color?", "image": "%%% not base64"}, 422, "image", "not base64"),
    ({"question": "   "}, 422, "question", "expected a non-empty string"),
    ({"image": None}, 422, "question", "missing"),
    ({"question": "what color?", "k": 99}, 422, "k", "expected an int in 0..16"),
    ({"question": "what color?", "k": "many"}, 422, "k", "'many'"),
    ({"question": "what color?", "k": True}, 422, "k", "True"),
    ({"question": "what color?", "sample_rate": 16000}, 422, "sample_rate", "unknown field"),
    (["what color?"], 400, "body", "expected a JSON object"),
]


def test_bad_requests_get_their_own_4xx_naming_the_field(server: str, rows: list[dict]) -> None:
    url = f"{server}/v1/answer"
    responses = [(httpx.post(url, json=body, timeout=TIMEOUT), status, field, words)
                 for body, status, field, words in BAD_JSON]
    raw = [(b'{"question": "what color?"', "application/json", 400, "body", "not valid JSON"),
           (b"question=what", "application/x-www-form-urlencoded", 415, "content-type", "multipart/form-data"),
           (b"--x\r\n", "multipart/form-data", 400, "body", "malformed multipart/form-data")]
    responses += [(httpx.post(url, content=body, headers={"content-type": kind}, timeout=TIMEOUT), status, field, words)
                  for body, kind, status, field, words in raw]
    forms = [({"question": "what?", "k": "many"}, None, "k", "'many'"),
             ({"question": "what?", "image": "not a file"}, None, "image", "expected an uploaded file"),
             ({"question": "what?", "colour": "red"}, None, "colour", "unknown form field"),
             ({"k": "4"}, {"image": Path(rows[0]["image"]).read_bytes()}, "question", "missing"),
             ({"question": "what?"}, {"audio": b"\x00" * 64}, "audio", "not a readable audio file")]
    for data, files, field, words in forms:
        response = httpx.post(url, data=data, files=files, timeout=TIMEOUT) if files else httpx.post(
            url, content=_multipart(data), headers={"content-type": f"multipart/form-data; boundary={B}"},
            timeout=TIMEOUT)
        responses.append((response, 422, field, words))
    for response, status, field, words in responses:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["field"] == field and words in error["message"], error
    good = post_json(server, rows[0], True, 4)
    assert good["action"] == {"audio": True, "k": 4}


B = "safe-test-boundary"


def _multipart(fields: dict[str, str]) -> bytes:
    """A multipart/form-data body of text fields only (httpx sends those url-encoded)."""
    parts = [f'--{B}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()]
    return ("".join(parts) + f"--{B}--\r\n").encode()


def test_oversize_bodies_get_413_by_header_and_by_bytes_read(server: str, rows: list[dict]) -> None:
    limit = MAX_BODY_MB * 2**20
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:  # declares more than it sends
        sock.sendall(f"POST /v1/answer HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {limit + 1}\r\nConnection: close\r\n\r\n{{}}".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413") and b'"field":"body"' in reply and b"Content-Length" in reply, reply

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies to the bytes read
        yield b'{"question": "what?", "image": "'
        for _ in range(limit // 2**16):
            yield b"A" * 2**16
        yield b'AAAA"}'

    response = httpx.post(f"{server}/v1/answer", content=chunks(), headers={"content-type": "application/json"},
                          timeout=TIMEOUT)
    assert response.status_code == 413 and response.json()["error"]["field"] == "body", response.text
    assert "bytes read" in response.json()["error"]["message"]
    assert post_json(server, rows[1], True, 4)["action"]["audio"]


def test_metrics_parse_and_add_up_to_the_requests_sent(server: str, rows: list[dict]) -> None:
    before = metrics(server)
    sent = {200: 0, 422: 0, 400: 0}
    actions: dict[str, int] = {}
    for n, row in enumerate(rows[:5]):
        result = post_json(server, row, n % 2 == 0, 8 if n < 3 else 0)
        sent[200] += 1
        key = f'safe_actions_total{{audio="{str(result["action"]["audio"]).lower()}",k="{result["action"]["k"]}"}}'
        actions[key] = actions.get(key, 0) + 1
    for _ in range(3):
        assert httpx.post(f"{server}/v1/answer", json={"question": ""}, timeout=TIMEOUT).status_code == 422
        sent[422] += 1
    assert httpx.post(f"{server}/v1/answer", content=b"{", headers={"content-type": "application/json"},
                      timeout=TIMEOUT).status_code == 400
    sent[400] += 1
    health = httpx.get(f"{server}/healthz", timeout=TIMEOUT).json()
    assert health["status"] == "ok" and health["queue_depth"] == 0 and health["policy"] and health["base"]
    after = metrics(server)
    for code, count in sent.items():
        assert delta(before, after, f'safe_requests_total{{code="{code}"}}') == count, code
    assert delta(before, after, "safe_request_latency_seconds_count") == sum(sent.values())
    assert {k: delta(before, after, k) for k in after if k.startswith("safe_actions_total")} == \
        {k: actions.get(k, 0) for k in after if k.startswith("safe_actions_total")}
    assert delta(before, after, "safe_batch_size_sum") == sent[200]
    assert after["safe_queue_depth"] == 0


def test_a_failing_batch_answers_500_naming_the_error_and_the_server_keeps_serving(
        pipe: SafePipeline, rows: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    answer = pipe.answer

    def fails_on_boom(requests: list, gate: float = 1.0) -> list[dict]:
        if any(r.question == "boom" for r in requests):
            raise RuntimeError("planted model failure")
        return answer(requests, gate)

    monkeypatch.setattr(pipe, "answer", fails_on_boom)
    with TestClient(create_app(pipe, ServeSettings(max_wait_ms=0))) as client:
        failed = client.post("/v1/answer", json={"question": "boom", "k": 0})
        assert failed.status_code == 500
        assert failed.json()["error"] == {"field": None, "message": "the model failed on this request's batch: "
                                                                     "RuntimeError: planted model failure"}
        good = client.post("/v1/answer", json={"question": rows[0]["question"], "image": b64(rows[0]["image"]),
                                               "k": 0})
        assert good.status_code == 200 and good.json()["action"] == {"audio": False, "k": 0}
        counted = parse_metrics(client.get("/metrics").text)
    assert counted['safe_batch_errors_total{error="RuntimeError"}'] == 1
    assert counted['safe_requests_total{code="500"}'] == 1 and counted['safe_requests_total{code="200"}'] == 1


def test_sigterm_answers_requests_in_flight_and_exits_0(run_dir: Path, rows: list[dict], tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with serve(["--bridge", str(run_dir), "--max-wait-ms", "2000", "-v"], log) as (proc, url):
        results: list[httpx.Response] = []

        def send(row: dict) -> None:
            body = {"question": row["question"], "image": b64(row["image"]), "audio": b64(row["audio"]), "k": 4}
            results.append(httpx.post(f"{url}/v1/answer", json=body, timeout=TIMEOUT))

        senders = [threading.Thread(target=send, args=(row,)) for row in rows[:6]]
        for sender in senders:
            sender.start()
        deadline = time.monotonic() + TIMEOUT
        while httpx.get(f"{url}/healthz", timeout=TIMEOUT).json()["queue_depth"] < len(senders):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        for sender in senders:
            sender.join(TIMEOUT)
        assert proc.wait(TIMEOUT) == 0, log.read_text()
    assert [r.status_code for r in results] == [200] * len(senders)
    assert all(r.json()["action"] == {"audio": True, "k": 4} and r.json()["batch_size"] == 6 for r in results)
    text = log.read_text()
    assert "stopped on SIGTERM" in text and re.search(r"DEBUG serve.batcher: batch of 6 requests", text), text


@pytest.mark.parametrize("flags, message", [
    (["--max-batch", "0"], "--max-batch is 0; expected an integer >= 1"),
    (["--port", "70000"], "--port is 70000; expected an integer >= 0 and <= 65535"),
    (["--max-wait-ms", "nan"], "--max-wait-ms is nan; expected a finite number >= 0"),
    (["--max-body-mb", "inf"], "--max-body-mb is inf; expected a finite number > 0"),
    (["--threads", "0"], "--threads is 0; expected None or an integer >= 1"),
])
def test_bad_numbers_exit_2_before_the_bridge_loads(tmp_path: Path, flags: list[str], message: str,
                                                    capsys: pytest.CaptureFixture) -> None:
    assert serve_main(["--bridge", str(tmp_path / "none"), *flags]) == 2  # loading first would name the folder
    assert capsys.readouterr().err == f"safe-serve: {message}\n"


def test_bad_arguments_exit_2_naming_them(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        serve_main(["--bridge", str(run_dir), "--dtype", "float64"])
    assert exited.value.code == 2 and "--dtype: invalid choice: 'float64'" in capsys.readouterr().err
    assert serve_main(["--bridge", str(run_dir), "--policy", "/no/such/policy"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("safe-serve: /no/such/policy")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert serve_main(["--bridge", str(run_dir), "--port", str(port)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (f"safe-serve: --host 127.0.0.1 --port {port}: cannot listen "
                                                        "there (Address already in use); expected a free local address")


def test_the_listening_socket_sends_without_delay() -> None:
    """Accepted connections inherit TCP_NODELAY (without it, keep-alive requests wait ~40 ms for a delayed ACK)."""
    with bind("127.0.0.1", 0) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        client = socket.create_connection(sock.getsockname())
        accepted, _ = sock.accept()
        with client, accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
