"""A local page on which a person labels preference queries of a training run.

    python -m agents.label --run RUN_DIR [--port 8765]

then open http://127.0.0.1:8765/.  The page shows the oldest pending pair of
:class:`birl.feedback.HumanTeacher` as two looping animations side by side and records one of
left / right / equal / skip (buttons, or the keys ``1``/``←``, ``2``/``→``, ``3``/``↑``/``=``,
``space``/``↓``).  Every answer is appended to ``RUN_DIR/answers.jsonl`` (fsynced) and
``RUN_DIR/preferences.npz`` is rebuilt atomically before the page moves on (see
:mod:`birl.feedback.human`).

The server listens on 127.0.0.1 only; requests naming another host are refused (DNS
rebinding), and answers must be posted as JSON, which browsers do not send across sites
without the server's consent.

JSON API: ``GET /api/next`` (the next pending query and the progress), ``GET /api/status``,
``GET /api/query/<id>/<left|right>.gif``, ``POST /api/label`` with
``{"query_id": ..., "label": "left" | "right" | "equal" | "skip"}``.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import sys
from typing import Any, Optional, Sequence

import numpy as np
from flask import Flask, Response, jsonify, request
from PIL import Image

from birl.feedback.human import CHOICES, AnswerConflictError, LabelStore

__all__ = ["create_app", "frames_to_gif", "main", "HOST"]

#: the only address the page is served on
HOST = "127.0.0.1"


def frames_to_gif(frames: np.ndarray, fps: float = 20.0) -> bytes:
    """Encode ``uint8 [T, h, w, 3]`` frames as an endlessly looping animated GIF."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 [T, h, w, 3] with T >= 1, got {frames.dtype} {frames.shape}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], loop=0, duration=round(1000 / fps), disposal=1)
    return buf.getvalue()


def _error(status: int, message: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    return response


def create_app(run_dir: str, fps: float = 20.0) -> Flask:
    """The labelling app for ``run_dir`` (created if missing; ``preferences.npz`` is rebuilt from
    the answer log on start, so a crash between the two writes heals here).

    Args:
        run_dir: the run directory of a :class:`birl.feedback.HumanTeacher`.
        fps: playback speed of the animations.
    """
    store = LabelStore(run_dir)
    store.rebuild_dataset()
    app = Flask(__name__)
    app.config["LABEL_STORE"] = store
    app.config["TRUSTED_HOSTS"] = ["127.0.0.1", "localhost"]  # refuse other Host headers (DNS rebinding)

    @functools.lru_cache(maxsize=64)  # query files never change, so their GIFs can be cached
    def gif(query_id: str, side: str) -> bytes:
        q = store.load_query(query_id)
        return frames_to_gif(q.frames1 if side == "left" else q.frames2, fps)

    @app.get("/")
    def page() -> Response:
        return Response(_PAGE, mimetype="text/html")

    @app.get("/api/status")
    def status() -> Response:
        return jsonify(store.progress())

    @app.get("/api/next")
    def next_query() -> Response:
        pending = store.pending()
        out: dict[str, Any] = {"query_id": None, **store.progress()}
        if pending:
            qid = pending[0]
            out.update(query_id=qid, left=f"/api/query/{qid}/left.gif", right=f"/api/query/{qid}/right.gif")
        return jsonify(out)

    @app.get("/api/query/<query_id>/<side>.gif")
    def query_gif(query_id: str, side: str) -> Response:
        if side not in ("left", "right"):
            return _error(404, f"side must be 'left' or 'right', got {side!r}")
        if not store.has_query(query_id):
            return _error(404, f"query_id {query_id!r}: no such query")
        response = Response(gif(query_id, side), mimetype="image/gif")
        response.headers["Cache-Control"] = "private, max-age=86400, immutable"
        return response

    @app.post("/api/label")
    def post_label() -> Response:
        if not request.is_json:
            return _error(415, "post the answer as JSON (Content-Type: application/json)")
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _error(400, 'the body must be a JSON object {"query_id": ..., "label": ...}')
        qid, choice = body.get("query_id"), body.get("label")
        if not isinstance(qid, str) or not qid:
            return _error(400, "query_id is missing or not a string")
        if choice not in CHOICES:
            return _error(400, f"label must be one of {sorted(CHOICES)}, got {choice!r}")
        if not store.has_query(qid):
            return _error(404, f"query_id {qid!r}: no such query")
        try:
            label = store.record(qid, choice)
        except AnswerConflictError as err:
            return _error(409, str(err))
        return jsonify({"query_id": qid, "label": label, **store.progress()})

    return app


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m agents.label --run RUN_DIR [--port PORT]``."""
    parser = argparse.ArgumentParser(prog="python -m agents.label", description="Label preference queries of a training run.")
    parser.add_argument("--run", required=True, help="run directory of the HumanTeacher (created if missing)")
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765)")
    parser.add_argument("--host", default=HOST, help=argparse.SUPPRESS)  # accepted only to refuse other hosts clearly
    parser.add_argument("--fps", type=float, default=20.0, help="animation frames per second (default 20)")
    args = parser.parse_args(argv)
    if args.host != HOST:
        parser.error(
            f"--host: the labelling page is served on {HOST} only, got {args.host!r}; "
            f"from another machine use an SSH tunnel: ssh -L {args.port}:{HOST}:{args.port} THIS_HOST"
        )
    if not 0 < args.port < 65536:
        parser.error(f"--port must lie in 1..65535, got {args.port}")
    if os.path.exists(args.run) and not os.path.isdir(args.run):
        parser.error(f"--run: {args.run!r} is not a directory")
    app = create_app(args.run, fps=args.fps)
    print(f"labelling {os.path.abspath(args.run)} at http://{HOST}:{args.port}/  (Ctrl-C to stop)", file=sys.stderr)
    app.run(host=HOST, port=args.port, threaded=True)


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Preference labelling</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1em 2em; text-align: center; }
  h1 { font-size: 1.4em; }
  #pair { display: flex; gap: 2em; justify-content: center; margin: 1em 0; }
  #pair figure { margin: 0; }
  #pair img { width: 256px; image-rendering: pixelated; border: 1px solid #999; }
  button { font-size: 1.1em; margin: 0 .4em; padding: .4em 1em; }
  #message { color: #a00; min-height: 1.4em; }
  kbd { border: 1px solid #999; border-radius: 3px; padding: 0 .3em; }
</style>
</head>
<body>
<h1>Which segment is better?</h1>
<p id="progress">loading...</p>
<div id="pair" hidden>
  <figure><img id="left" alt="left segment"><figcaption>left</figcaption></figure>
  <figure><img id="right" alt="right segment"><figcaption>right</figcaption></figure>
</div>
<p id="idle" hidden>No pending query: waiting for the training run to ask...</p>
<div id="buttons">
  <button id="btn-left" data-label="left">Left better <kbd>1</kbd>/<kbd>&larr;</kbd></button>
  <button id="btn-equal" data-label="equal">Equal <kbd>3</kbd>/<kbd>&uarr;</kbd></button>
  <button id="btn-right" data-label="right">Right better <kbd>2</kbd>/<kbd>&rarr;</kbd></button>
  <button id="btn-skip" data-label="skip">Skip <kbd>space</kbd>/<kbd>&darr;</kbd></button>
</div>
<p id="message"></p>
<script>
let current = null, busy = false, timer = null;
const $ = (id) => document.getElementById(id);
function showProgress(s) {
  $("progress").textContent = `${s.answered} of ${s.total} labelled` +
    (s.skipped ? ` (${s.skipped} skipped)` : "") + `, ${s.pending} pending`;
}
async function loadNext() {
  clearTimeout(timer);
  const s = await (await fetch("/api/next")).json();
  showProgress(s);
  current = s.query_id;
  $("pair").hidden = current === null;
  $("idle").hidden = current !== null;
  document.querySelectorAll("#buttons button").forEach((b) => (b.disabled = current === null));
  if (current === null) { timer = setTimeout(loadNext, 2000); return; }
  $("left").src = s.left;
  $("right").src = s.right;
}
async function answer(label) {
  if (busy || current === null) return;
  busy = true;
  try {
    const r = await fetch("/api/label", {method: "POST", headers: {"Content-Type": "application/json"},
                                         body: JSON.stringify({query_id: current, label: label})});
    const body = await r.json();
    $("message").textContent = r.ok ? "" : body.error;
    await loadNext();
  } catch (e) {
    $("message").textContent = "could not save the answer: " + e;
  } finally { busy = false; }
}
document.querySelectorAll("#buttons button").forEach((b) => b.addEventListener("click", () => answer(b.dataset.label)));
const KEYS = {"1": "left", "ArrowLeft": "left", "2": "right", "ArrowRight": "right",
              "3": "equal", "=": "equal", "ArrowUp": "equal", " ": "skip", "ArrowDown": "skip"};
document.addEventListener("keydown", (e) => {
  if (KEYS[e.key]) { e.preventDefault(); answer(KEYS[e.key]); }
});
loadNext();
</script>
</body>
</html>
"""


if __name__ == "__main__":
    main()
