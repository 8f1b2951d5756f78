"""Benchmark: `safe-serve` under a bounded load on the embedded world's default run.

Run: python benchmarks/serve_load.py [--bridge runs/stage_a] [--policy runs/stage_b/alpha0.1-gamma0-seed0]
         [--requests 400] [--mixed 2000] [--concurrency 1,4,16,64]

A real server (`safe-serve`, a subprocess on a free loopback port) answers a fixed count of test-split questions
(image and audio files as base64 JSON) sent by an asyncio load generator holding `concurrency` requests in flight.
Three experiments, each in one run on one machine (the client shares the machine's cores with the server):
1. policy-chosen audio (k omitted, the server's --policy decides) vs always k = 16, at each concurrency: req/s,
   client-side p50/p95/p99 latency, batch-size and action histograms, accuracy (the dataset's metric) with a CI;
2. dynamic batching (--max-batch 16) vs batch size 1 (--max-batch 1) at concurrency 16: always k = 16,
   policy-chosen, and no audio (k = 0), since the audio encoder and the LM gain differently from batching;
3. `--mixed` requests at concurrency 16 with every tenth one bad (corrupt, NaN or unresamplable audio, an image that
   is not an image, an empty question, k = 99, invalid JSON, an oversize body): each bad one must get its 4xx naming
   its field, and each good one a 200 whose answer equals the offline `SafePipeline` answer for the same request.
Every answer is compared with the offline pipeline's (same k, or the same policy); results go to
benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from shared.benchmark import save_result
from shared.config import load_config
from shared.data.audio_io import load_audio
from shared.dataset_metrics import DatasetScorer
from shared.logs import setup_logging
from shared.stats import mean_ci
from stage_a.checkpointing import bridge_folder
from stage_a.config import TrainConfig
from stage_a.pipeline import SafePipeline
from stage_a.setup import build_setup
from stage_b.chooser import PolicyChooser

RATE = 16000
MAX_BODY_MB = 2  # the mixed run's server limit, so an oversize body costs little to send


def wav_bytes(wave: np.ndarray, rate: int = RATE) -> bytes:
    """A float32 WAV file: decodes to exactly `wave`, so the server sees what the offline pipeline sees."""
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Questions:
    """`n` test questions (seeded sample) as offline inputs and as JSON bodies, with their samples for scoring."""

    def __init__(self, bridge: Path, n: int, seed: int = 0) -> None:
        split = build_setup(load_config(TrainConfig, "stage_a"), splits=("test",), bridge_dir=bridge).test
        rows = np.sort(np.random.default_rng(seed).choice(len(split.samples), size=min(n, len(split.samples)),
                                                          replace=False)).tolist()
        self.samples = [split.samples[i] for i in rows]
        self.images = [split.visuals[i] for i in rows]
        clips = [split.clip(i) for i in rows]
        self.waves = [load_audio(c.path, RATE, c.start, c.end) for c in clips]
        self.bodies = [{"question": s.question, "image": b64(Path(im).read_bytes()), "audio": b64(wav_bytes(w))}
                       for s, im, w in zip(self.samples, self.images, self.waves)]
        self.scorer = DatasetScorer(self.samples)

    def offline(self, pipe: SafePipeline, k: int | str, batch: int = 64) -> list[dict]:
        """The offline pipeline's results for every question at k (an int or 'auto')."""
        out: list[dict] = []
        for start in range(0, len(self.samples), batch):
            end = start + batch
            out += pipe(image=self.images[start:end], audio=[(w, RATE) for w in self.waves[start:end]],
                        question=[s.question for s in self.samples[start:end]], k=k)
        return out


def bad_bodies(good: dict, n: int) -> list[tuple[str, object, int, str | None]]:
    """n bad requests cycling through the kinds: (kind, body (dict, or bytes for raw JSON), status, field)."""
    nan_wave = np.zeros(RATE, np.float32)
    nan_wave[100] = np.nan
    kinds = [("corrupt_audio", {**good, "audio": b64(b"RIFF not really a wav")}, 422, "audio"),
             ("nan_audio", {**good, "audio": b64(wav_bytes(nan_wave))}, 422, "audio"),
             ("unresamplable_rate", {**good, "audio": b64(wav_bytes(np.zeros(44101, np.float32), 44101))}, 422, "audio"),
             ("not_an_image", {**good, "image": b64(os.urandom(512))}, 422, "image"),
             ("empty_question", {**good, "question": "   "}, 422, "question"),
             ("unknown_k", {**good, "k": 99}, 422, "k"),
             ("invalid_json", b'{"question": "what is', 400, "body"),
             ("oversize_body", {**good, "image": b64(os.urandom(int(MAX_BODY_MB * 1.1 * 2 ** 20)))}, 413, "body")]
    return [kinds[i % len(kinds)] for i in range(n)]


class Server:
    """`safe-serve` in a subprocess on a free loopback port; stopped with SIGTERM (graceful) on exit."""

    def __init__(self, bridge: Path, policy: Path | None, max_batch: int, max_wait_ms: float,
                 max_body_mb: float = 16) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "serve.cli", "--bridge", str(bridge), "--port", str(self.port),
                   "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--max-body-mb", str(max_body_mb)]
        self.process = subprocess.Popen(command + (["--policy", str(policy)] if policy else []),
                                        env={**os.environ, "HF_HUB_OFFLINE": "1"})

    def __enter__(self) -> Server:
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"safe-serve exited with {self.process.returncode} before answering /healthz")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"safe-serve did not answer {self.url}/healthz within 300 s")

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.exit_code = self.process.wait(timeout=120)


async def _send(url: str, bodies: list, concurrency: int) -> tuple[list[tuple[int, float, dict]], float]:
    """POST every body with at most `concurrency` in flight: ([(status, seconds, reply)] in order, wall seconds)."""
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        async def one(body: object) -> tuple[int, float, dict]:
            async with gate:
                start = time.perf_counter()
                if isinstance(body, bytes):
                    reply = await client.post("/v1/answer", content=body, headers={"content-type": "application/json"})
                else:
                    reply = await client.post("/v1/answer", json=body)
                return reply.status_code, time.perf_counter() - start, reply.json()
        start = time.perf_counter()
        results = await asyncio.gather(*(one(b) for b in bodies))
        return list(results), time.perf_counter() - start


def load_run(server: Server, questions: Questions, k: int | None, concurrency: int,
             expected: list[dict]) -> dict:
    """One bounded load: every question once at `concurrency`; throughput, latency, batches, actions, accuracy."""
    bodies = [body if k is None else {**body, "k": k} for body in questions.bodies]
    replies, wall = asyncio.run(_send(server.url, bodies, concurrency))
    failed = [(s, r) for s, _, r in replies if s != 200]
    if failed:
        raise RuntimeError(f"{len(failed)} good requests failed, first: {failed[0]}")
    latencies = np.array([t for _, t, _ in replies]) * 1000
    answers = [r["answer"] for _, _, r in replies]
    scores = [questions.scorer.score(s, a) for s, a in zip(questions.samples, answers)]
    return {"concurrency": concurrency, "requests": len(bodies), "wall_s": round(wall, 3),
            "req_per_s": round(len(bodies) / wall, 2),
            **{f"p{q}_ms": round(float(np.percentile(latencies, q)), 2) for q in (50, 95, 99)},
            "batch_sizes": dict(sorted(Counter(r["batch_size"] for _, _, r in replies).items())),
            "actions": {f"k{k_}": n for k_, n in sorted(Counter(r["action"]["k"] for _, _, r in replies).items())},
            "accuracy": mean_ci(np.asarray(scores)),
            "equal_to_offline": float(np.mean([a == e["answer"] for a, e in zip(answers, expected)])),
            "same_action_as_offline": float(np.mean([r["action"] == e["action"]
                                                     for (_, _, r), e in zip(replies, expected)]))}


def mixed_run(bridge: Path, questions: Questions, expected: list[dict], total: int, concurrency: int) -> dict:
    """`total` requests at concurrency, every tenth bad: bad ones named, good ones answered as offline."""
    n_bad = total // 10  # the requests i with i % 10 == 9
    bad = bad_bodies({**questions.bodies[0], "k": 16}, n_bad)
    plan: list[tuple[str, object, int, str | None, int | None]] = [
        (*bad[i // 10], None) if i % 10 == 9 else
        ("good", {**questions.bodies[i % len(questions.bodies)], "k": 16}, 200, None, i % len(questions.bodies))
        for i in range(total)]
    with Server(bridge, None, 16, 5, MAX_BODY_MB) as server:
        replies, wall = asyncio.run(_send(server.url, [p[1] for p in plan], concurrency))
        health = httpx.get(f"{server.url}/healthz", timeout=10).status_code
    good = [(p, r) for p, r in zip(plan, replies) if p[4] is not None]
    wrong = [(p[0], r[0], r[2]) for p, r in zip(plan, replies) if p[4] is None
             and (r[0] != p[2] or r[2].get("error", {}).get("field") != p[3])]
    return {"requests": total, "bad": n_bad, "concurrency": concurrency, "wall_s": round(wall, 3),
            "good_answered_200": sum(r[0] == 200 for _, r in good), "good": len(good),
            "good_equal_to_offline": sum(r[0] == 200 and r[2]["answer"] == expected[p[4]]["answer"] for p, r in good),
            "bad_refused_as_expected": n_bad - len(wrong), "bad_kinds": dict(Counter(p[0] for p in plan
                                                                                    if p[4] is None)),
            "first_unexpected_bad_replies": wrong[:3], "healthz_after": health, "exit_code": server.exit_code}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bridge", type=Path, default=Path("runs/stage_a"))
    parser.add_argument("--policy", type=Path, default=Path("runs/stage_b/alpha0.1-gamma0-seed0"))
    parser.add_argument("--requests", type=int, default=400, help="questions per load run")
    parser.add_argument("--mixed", type=int, default=2000, help="requests in the run mixed with 10 % bad ones")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_load.json"))
    args = parser.parse_args()
    setup_logging()
    bridge = bridge_folder(args.bridge)
    questions = Questions(bridge, args.requests)
    pipe = SafePipeline.from_pretrained(bridge, policy=PolicyChooser.load(args.policy))
    expected = {"k16": questions.offline(pipe, 16), "policy": questions.offline(pipe, "auto")}
    del pipe
    levels = [int(c) for c in args.concurrency.split(",")]
    result: dict = {"benchmark": "serve_load", "bridge": str(bridge), "policy": str(args.policy),
                    "requests_per_run": len(questions.bodies), "offline_accuracy": {
                        name: mean_ci(np.asarray([questions.scorer.score(s, e["answer"])
                                                  for s, e in zip(questions.samples, exp)]))
                        for name, exp in expected.items()}, "policy_vs_k16": {}, "batching": {}}
    for name, policy, k in (("k16", None, 16), ("policy", args.policy, None)):
        with Server(bridge, policy, 16, 5) as server:
            result["policy_vs_k16"][name] = [load_run(server, questions, k, c, expected[name]) for c in levels]
    result["policy_vs_k16"]["req_per_s_ratio"] = {
        str(c): round(p["req_per_s"] / s["req_per_s"], 3)
        for c, p, s in zip(levels, result["policy_vs_k16"]["policy"], result["policy_vs_k16"]["k16"])}
    expected["k0"] = questions.offline(SafePipeline.from_pretrained(bridge), 0)
    for mode, policy, k in (("k16", None, 16), ("policy", args.policy, None), ("k0", None, 0)):
        runs = {}
        for name, max_batch in (("batch1", 1), ("dynamic16", 16)):
            with Server(bridge, policy, max_batch, 5) as server:
                runs[name] = load_run(server, questions, k, 16, expected[mode])
        runs["req_per_s_ratio"] = round(runs["dynamic16"]["req_per_s"] / runs["batch1"]["req_per_s"], 3)
        result["batching"][mode] = runs
    result["mixed"] = mixed_run(bridge, questions, expected["k16"], args.mixed, 16)
    save_result(result, args.out)


if __name__ == "__main__":
    main()
