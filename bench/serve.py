"""`stylize serve` under load: its peak memory (resident set) with the default limits, on this machine only.

Starts `stylize serve --port 0` (every shipped model, the defaults) as a user does, its temporary folder
in a folder of this script's, then:

  1. every model at two strengths, one after the other (the model LRU: without it every model stayed
     open, 3.8 GB);
  2. at once: 10 mixed requests (a 48 MP and a 12 MP phone-sized JPEG, a 1024x768 PNG sent chunked, a
     painting, two more photos, an upload over the limit, a file that is no image, the page, the styles)
     and three 15000x15000 PNGs of 0.6 MB each (decoded, each would take ~1 GB: refused from the header);
  3. SIGTERM, and whether the temporary folder is gone.

Every request is bounded in count and time (--timeout), to 127.0.0.1 only. Prints one JSON object:
the peak resident MB (VmHWM) and the sampled resident MB after each phase, the answers' codes and times.

    python bench/serve.py [--timeout 600] [--json out.json]
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, synthetic_photo  # noqa: E402


def proc_mb(pid: int, field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of a process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def bomb_png(path: Path, side: int = 15000) -> Path:
    """A real side x side RGB PNG of one colour, streamed through zlib (0.6 MB at 15000)."""
    if path.exists():
        return path

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row, parts = zlib.compressobj(9), bytes(1 + 3 * side), []
    for _ in range(side):
        parts.append(z.compress(row))
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    return path


def multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for k, v in fields.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    for k, (name, data) in files.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{name}"\r\n\r\n'.encode()
                   + data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


class Client:
    def __init__(self, port: int, timeout: float):
        self.port, self.timeout = port, timeout

    def call(self, method: str, path: str, body=None, headers: dict | None = None, chunked: bool = False):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            if chunked:  # no Content-Length: Transfer-Encoding: chunked
                data = body
                body = (data[i:i + 65536] for i in range(0, len(data), 65536))
            conn.request(method, path, body, headers or {}, encode_chunked=chunked)
            r = conn.getresponse()
            data = r.read()
            return r.status, data
        finally:
            conn.close()

    def post(self, fields: dict, files: dict, chunked: bool = False):
        body, kind = multipart(fields, files)
        code, data = self.call("POST", "/api/jobs", body, {"Content-Type": kind}, chunked)
        return code, json.loads(data)

    def wait(self, job_id: str, deadline: float) -> dict:
        while time.monotonic() < deadline:
            code, data = self.call("GET", f"/api/jobs/{job_id}")
            job = json.loads(data)
            if job.get("state") not in ("queued", "running"):
                return job
            time.sleep(0.2)
        raise TimeoutError(job_id)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timeout", type=float, default=600, help="Seconds for the whole run.")
    ap.add_argument("--json", type=Path, help="Also write the summary here.")
    args = ap.parse_args()
    deadline = time.monotonic() + args.timeout
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    rng = np.random.default_rng(0)
    files = {}
    for name, (w, h) in {"48mp.jpg": (8000, 6000), "12mp.jpg": (4032, 3024), "photo.jpg": (1024, 768)}.items():
        buf = io.BytesIO()
        synthetic_photo(rng, w, h).save(buf, "JPEG", quality=85)
        files[name] = buf.getvalue()
    buf = io.BytesIO()
    synthetic_photo(rng, 1024, 768).save(buf, "PNG")
    files["photo.png"] = buf.getvalue()
    files["painting.jpg"] = (ROOT / "examples" / "chelsea_starry_night.jpg").read_bytes()
    files["bomb.png"] = bomb_png(work / "bomb.png").read_bytes()
    sizes = {k: round(len(v) / 2**20, 2) for k, v in files.items()}

    tmp = work / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "stylize", "serve", "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    summary: dict = {"inputs_mb": sizes}
    try:
        line = proc.stdout.readline()
        port = int(line.split("open http://127.0.0.1:")[1].split("/")[0])
        client = Client(port, timeout=120)
        styles = json.loads(client.call("GET", "/api/styles")[1])
        summary["start_rss_mb"] = round(proc_mb(proc.pid, "VmRSS"))

        # 1. every model at two strengths, one at a time
        models = {}
        for label in styles["styles"]:
            models.setdefault(label.split(":")[0], label)  # one label per model file
        t0, states = time.monotonic(), []
        for label in models.values():
            for strength in ("1", "0.5"):
                extra = {"painting": ("painting.jpg", files["painting.jpg"])} if label == styles["painting"] else {}
                code, answer = client.post({"style": label, "strength": strength}, {"photo": ("p.jpg", files["photo.jpg"]), **extra})
                states.append(client.wait(answer["id"], deadline)["state"] if code == 202 else code)
        summary["models"] = {"jobs": len(states), "done": states.count("done"), "seconds": round(time.monotonic() - t0, 1),
                             "rss_mb": round(proc_mb(proc.pid, "VmRSS")), "peak_mb": round(proc_mb(proc.pid, "VmHWM"))}

        # 2. ten mixed requests and three 15000x15000 PNGs at once
        labels = list(models.values())
        painting = styles["painting"]
        requests = [
            ("48 MP JPEG", lambda: client.post({"style": labels[0], "strength": "0.7"}, {"photo": ("a.jpg", files["48mp.jpg"])})),
            ("48 MP JPEG", lambda: client.post({"style": labels[1]}, {"photo": ("b.jpg", files["48mp.jpg"])})),
            ("12 MP JPEG", lambda: client.post({"style": labels[2], "strength": "0.4"}, {"photo": ("c.jpg", files["12mp.jpg"])})),
            ("12 MP JPEG", lambda: client.post({"style": labels[3]}, {"photo": ("d.jpg", files["12mp.jpg"])})),
            ("painting", lambda: client.post({"style": painting, "strength": "0.8"},
                                             {"photo": ("e.jpg", files["12mp.jpg"]), "painting": ("p.jpg", files["painting.jpg"])})),
            ("chunked PNG", lambda: client.post({"style": labels[4]}, {"photo": ("f.png", files["photo.png"])}, chunked=True)),
            ("over the limit", lambda: client.post({"style": labels[0]}, {"photo": ("g.jpg", os.urandom(26 << 20))})),
            ("not an image", lambda: client.post({"style": labels[0]}, {"photo": ("h.jpg", b"no image" * 1000)})),
            ("the page", lambda: (client.call("GET", "/")[0], {})),
            ("styles", lambda: (client.call("GET", "/api/styles")[0], {})),
        ] + [("15000x15000 PNG", lambda: client.post({"style": labels[0]}, {"photo": ("bomb.png", files["bomb.png"])}))] * 3
        answers: list = [None] * len(requests)
        peak_sampled = [0.0]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak_sampled[0] = max(peak_sampled[0], proc_mb(proc.pid, "VmRSS"))
                time.sleep(0.05)

        def one(i):
            t = time.monotonic()
            code, answer = requests[i][1]()
            answers[i] = {"what": requests[i][0], "code": code, "seconds": round(time.monotonic() - t, 2),
                          **({"error": answer["error"]} if "error" in answer else {})}
            if code == 202:
                job = client.wait(answer["id"], deadline)
                answers[i].update(state=job["state"], size=job["size"], photo=job["photo"],
                                  job_seconds=round(time.monotonic() - t, 1))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(1.0, deadline - time.monotonic()))
        done.set()
        summary["mixed"] = {"answers": answers, "seconds": round(time.monotonic() - t0, 1),
                            "rss_mb": round(proc_mb(proc.pid, "VmRSS")), "sampled_peak_mb": round(peak_sampled[0])}
        summary["peak_rss_mb"] = round(proc_mb(proc.pid, "VmHWM"))

        # 3. SIGTERM: the uploads and results go
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        summary["sigterm"] = {"exit": proc.returncode, "folder_left": [p.name for p in tmp.glob("stylize-serve-*")],
                              "stderr": err.strip().splitlines()[-3:]}
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
