"""Load test of `keras-unet serve` on localhost: several concurrent clients send X-AnyLabeling's /v1/predict request
(the same image each time) to a real server process; requests per second, p50/p95 latency and the error count.

Bounded in count and time: it stops after --requests requests or --seconds seconds, whichever comes first, and
exits 1 if any request failed (a non-200 answer or a connection error). With --clients at most
--concurrency + --queue, no request should be refused (503); with more, the refusals are counted by kind (HTTP 503, ...).

    python benchmarks/serve.py --clients 4 --concurrency 2 --queue 8 --requests 200 --seconds 120
"""

from __future__ import annotations

import argparse
import collections
import base64
import secrets
import statistics
import threading
import time

from common import REPO, Report

MODEL = REPO / "tests" / "fixtures" / "v0_1" / "export" / "model.tflite"
IMAGE = REPO / "data" / "sample" / "phantom_000.png"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(MODEL), help="any artefact keras-unet serve takes (default: the v0.1 "
                   "fixture's model.tflite, 64 px)")
    p.add_argument("--image", default=str(IMAGE), help="the image every request carries (default: phantom_000.png)")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    p.add_argument("--concurrency", type=int, default=2, help="the server's --concurrency (default 2)")
    p.add_argument("--queue", type=int, default=8, help="the server's --queue (default 8)")
    p.add_argument("--requests", type=int, default=200, help="stop after this many requests (default 200)")
    p.add_argument("--seconds", type=float, default=120.0, help="or after this many seconds (default 120)")
    p.add_argument("--quick", action="store_true", help="60 requests, 60 seconds at most")
    args = p.parse_args(argv)
    if args.quick:
        args.requests, args.seconds = min(args.requests, 60), min(args.seconds, 60.0)
    return args


def percentile(values, q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between the sorted values."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def load(url: str, token: str, payload: dict, clients: int, requests: int, seconds: float) -> dict:
    """Run the clients until `requests` have been sent or `seconds` have passed: latencies and failures."""
    import httpx

    lock, sent = threading.Lock(), [0]
    latencies, failures = [], []
    deadline = time.monotonic() + seconds

    def client():
        with httpx.Client(base_url=url, headers={"Token": token}, timeout=120) as http:
            while True:
                with lock:
                    if sent[0] >= requests or time.monotonic() >= deadline:
                        return
                    sent[0] += 1
                start = time.perf_counter()
                try:
                    answer = http.post("/v1/predict", json=payload)
                    ok = answer.status_code == 200 and answer.json()["data"]["shapes"]
                    problem = None if ok else f"HTTP {answer.status_code}: {answer.text[:120]}"
                except Exception as exc:  # a connection error counts as a failure, it does not stop the test
                    problem = f"{type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - start
                with lock:
                    (failures.append(problem) if problem else latencies.append(elapsed))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"wall": time.perf_counter() - start, "latencies": latencies, "failures": failures}


def main(argv=None) -> int:
    args = parse_args(argv)
    from keras_unet.serve.server import ServerProcess

    report = Report(f"serve load test: {args.clients} clients, server --concurrency {args.concurrency} --queue "
                    f"{args.queue}, at most {args.requests} requests / {args.seconds:.0f} s")
    token = secrets.token_hex(16)
    payload = {"model": "keras_unet", "image": "data:image/png;base64," + base64.b64encode(
        open(args.image, "rb").read()).decode(), "params": {"conf_threshold": 0.0, "iou_threshold": 0.0,
                                                            "epsilon_factor": 0.001}}
    report.line(f"model {args.model}; image {args.image} ({len(payload['image']):,} bytes as a data URI)")
    with ServerProcess(["--model", args.model, "--port", "0", "--token", token, "--concurrency", args.concurrency,
                        "--queue", args.queue]) as server:
        warm = load(server.url, token, payload, 1, 2, 60)  # the first calls of each interpreter
        result = load(server.url, token, payload, args.clients, args.requests, args.seconds)
    done, failures = result["latencies"], result["failures"] + warm["failures"]
    for problem, count in collections.Counter(p.split(":")[0] for p in failures).most_common():
        report.line(f"failed: {count} x {problem} (first: {next(p for p in failures if p.startswith(problem))})")
    if done:
        report.line(f"requests {len(done)} ok, {len(failures)} failed, in {result['wall']:.1f} s")
        report.line(f"throughput {len(done) / result['wall']:.2f} requests/s")
        report.line(f"latency p50 {1000 * percentile(done, 50):.0f} ms, p95 {1000 * percentile(done, 95):.0f} ms, "
                    f"mean {1000 * statistics.mean(done):.0f} ms")
    report.finish()
    return 1 if failures or not done else 0


if __name__ == "__main__":
    raise SystemExit(main())
