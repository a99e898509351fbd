"""Human labelling: the run-directory store, HumanTeacher, the Flask page and a real browser."""

import io
import json
import os
import pickle
import shutil
import threading
import time

import numpy as np
import pytest
from PIL import Image

from agents.label import create_app, frames_to_gif, main
from birl.feedback import HumanTeacher, LabelStore, PreferenceDataset, SegmentBatch
from birl.feedback.human import observation_frames

from conftest import skip_unless_ci


H = 4


def pairs(n, seed=0):
    """``n`` pairs of horizon-4 segments with 3-d float observations."""
    rng = np.random.default_rng(seed)

    def batch():
        return SegmentBatch(
            rng.normal(size=(n, H, 3)).astype(np.float32), rng.normal(size=(n, H, 1)).astype(np.float32),
            rng.normal(size=(n, H)), next_obs=rng.normal(size=(n, H, 3)).astype(np.float32),
        )  # fmt: skip

    return batch(), batch()


def ask(run_dir, n, seed=0, **kwargs):
    """Queue ``n`` queries without waiting; returns the teacher, the pairs and the query ids."""
    teacher = HumanTeacher(run_dir, wait=0, verbose=False, **kwargs)
    s1, s2 = pairs(n, seed)
    labels, keep = teacher.label(s1, s2)
    assert not keep.any()
    return teacher, s1, s2, LabelStore(run_dir).pending()


def post(client, query_id, label):
    return client.post("/api/label", json={"query_id": query_id, "label": label})


@pytest.fixture
def run_dir(tmp_path):
    return tmp_path / "run"


# ---------------------------------------------------------------------------------------- page
def test_page_serves_the_pair_and_stores_labels_durably(run_dir):
    _, s1, s2, ids = ask(run_dir, 3)
    client = create_app(run_dir).test_client()
    page = client.get("/")
    assert page.status_code == 200 and b'id="btn-left"' in page.data
    nxt = client.get("/api/next").get_json()
    assert nxt["query_id"] == ids[0] and (nxt["total"], nxt["answered"], nxt["pending"]) == (3, 0, 3)
    gif = client.get(nxt["left"])
    assert gif.status_code == 200 and gif.mimetype == "image/gif"
    img = Image.open(io.BytesIO(gif.data))
    assert img.n_frames == H and img.info.get("loop") == 0  # loops forever

    r = post(client, ids[0], "left")
    assert r.status_code == 200 and r.get_json()["label"] == 1.0 and r.get_json()["answered"] == 1
    assert post(client, ids[1], "skip").get_json()["label"] is None
    assert post(client, ids[2], "equal").get_json()["label"] == 0.5
    assert client.get("/api/next").get_json()["query_id"] is None
    assert client.get("/api/status").get_json() == {"total": 3, "answered": 3, "skipped": 1, "pending": 0}

    # the answer log has one fsynced line per answer; the dataset file holds the kept ones
    lines = [json.loads(x) for x in (run_dir / "answers.jsonl").read_text().splitlines()]
    assert [(x["query_id"], x["choice"], x["label"]) for x in lines] == [(ids[0], "left", 1.0), (ids[1], "skip", None), (ids[2], "equal", 0.5)]
    ds = PreferenceDataset.load(run_dir / "preferences.npz")
    np.testing.assert_array_equal(ds.labels, [1.0, 0.5])
    d1, d2, _ = ds[np.arange(2)]
    np.testing.assert_array_equal(d1.obs, s1.obs[[0, 2]])  # left = seg1, label 1 = seg1 preferred
    np.testing.assert_array_equal(d2.next_obs, s2.next_obs[[0, 2]])
    np.testing.assert_array_equal(d1.true_rewards, s1.true_rewards[[0, 2]])


def test_bad_requests_are_refused_with_clear_errors(run_dir):
    _, _, _, ids = ask(run_dir, 1)
    client = create_app(run_dir).test_client()
    r = post(client, "0-deadbeef", "left")
    assert r.status_code == 404 and "no such query" in r.get_json()["error"]
    r = post(client, "../../etc/passwd", "left")
    assert r.status_code == 404
    r = post(client, ids[0], "up")
    assert r.status_code == 400 and "label must be one of" in r.get_json()["error"]
    r = client.post("/api/label", json={"label": "left"})
    assert r.status_code == 400 and "query_id" in r.get_json()["error"]
    r = client.post("/api/label", data=f"query_id={ids[0]}&label=left")  # a form: not JSON
    assert r.status_code == 415
    assert client.get(f"/api/query/{ids[0]}/middle.gif").status_code == 404
    assert client.get("/api/query/0-deadbeef/left.gif").status_code == 404
    assert client.get("/api/status", headers={"Host": "evil.example"}).status_code == 400  # DNS rebinding
    assert post(client, ids[0], "right").status_code == 200
    r = post(client, ids[0], "left")  # the first answer stands
    assert r.status_code == 409 and "already answered" in r.get_json()["error"]
    assert LabelStore(run_dir).answers() == {ids[0]: 0.0}
    assert not os.path.exists(run_dir.parent / "etc")


def test_cli_refuses_other_hosts(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--run", str(tmp_path), "--host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert "--host" in err and "127.0.0.1" in err


def test_gif_encoder_checks_its_input():
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    assert frames_to_gif(frames).startswith(b"GIF8")
    with pytest.raises(ValueError, match="frames"):
        frames_to_gif(frames.astype(np.float32))


# ------------------------------------------------------------------------------------- teacher
def answer_in_background(run_dir, choices, timeout=10.0):
    """A thread that answers the next ``len(choices)`` queries as they appear, in order."""

    def work():
        store, deadline = LabelStore(run_dir), time.monotonic() + timeout
        todo = list(choices)
        while todo and time.monotonic() < deadline:
            pending = store.pending()
            if pending:
                store.record(pending[0], todo.pop(0))
            else:
                time.sleep(0.01)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    return t


def test_blocking_teacher_returns_the_persons_labels(run_dir):
    teacher = HumanTeacher(run_dir, poll_interval=0.01, verbose=False)
    s1, s2 = pairs(4)
    worker = answer_in_background(run_dir, ["left", "right", "equal", "skip"])
    labels, keep = teacher.label(s1, s2)
    worker.join()
    np.testing.assert_array_equal(labels[:3], [1.0, 0.0, 0.5])
    np.testing.assert_array_equal(keep, [True, True, True, False])
    assert labels.dtype == np.float32 and teacher.outstanding == [] and teacher.drain() is None


def test_wait_timeout_keeps_pairs_pending_and_drain_returns_late_answers(run_dir):
    teacher = HumanTeacher(run_dir, wait=0.05, poll_interval=0.01, verbose=False)
    s1, s2 = pairs(3)
    t0 = time.monotonic()
    labels, keep = teacher.label(s1, s2)
    assert time.monotonic() - t0 < 2.0 and not keep.any()
    store = LabelStore(run_dir)
    ids = store.pending()
    assert teacher.outstanding == ids and len(ids) == 3
    assert teacher.drain() is None  # nothing answered yet
    store.record(ids[2], "left")
    store.record(ids[0], "skip")
    d1, d2, y = teacher.drain()
    np.testing.assert_array_equal(y, [1.0])
    np.testing.assert_array_equal(d1.obs, s1.obs[[2]])
    np.testing.assert_array_equal(d2.acts, s2.acts[[2]])
    assert teacher.outstanding == [ids[1]]
    assert teacher.drain() is None  # each late answer is returned once

    # the outstanding ids survive pickling (model.save) and a new process adopting the run dir
    copy = pickle.loads(pickle.dumps(teacher))
    adopted = HumanTeacher(run_dir, verbose=False)
    assert copy.outstanding == adopted.outstanding == [ids[1]]
    store.record(ids[1], "right")
    assert copy.drain()[2].tolist() == adopted.drain()[2].tolist() == [0.0]


def test_truncated_answer_line_from_a_crash_loses_nothing(run_dir):
    _, s1, _, ids = ask(run_dir, 4)
    store = LabelStore(run_dir)
    store.record(ids[0], "left")
    store.record(ids[1], "right")
    with open(run_dir / "answers.jsonl", "ab") as f:  # a crash in the middle of a write
        f.write(b'{"query_id": "' + ids[2].encode() + b'", "cho')
    assert store.answers() == {ids[0]: 1.0, ids[1]: 0.0}
    assert store.pending() == ids[2:]
    os.remove(run_dir / "preferences.npz")  # ... and before the dataset was rebuilt
    client = create_app(run_dir).test_client()  # rebuilds the dataset from the log
    assert len(PreferenceDataset.load(run_dir / "preferences.npz")) == 2
    assert post(client, ids[2], "equal").status_code == 200
    assert post(client, ids[3], "left").status_code == 200
    assert LabelStore(run_dir).answers() == {ids[0]: 1.0, ids[1]: 0.0, ids[2]: 0.5, ids[3]: 1.0}
    ds = PreferenceDataset.load(run_dir / "preferences.npz")
    np.testing.assert_array_equal(ds.labels, [1.0, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(ds[np.arange(4)][0].obs, s1.obs)


def test_teacher_checks_arguments_and_renderer_output(run_dir):
    with pytest.raises(ValueError, match="wait"):
        HumanTeacher(run_dir, wait=-1)
    with pytest.raises(ValueError, match="poll_interval"):
        HumanTeacher(run_dir, poll_interval=0)
    with pytest.raises(TypeError, match="renderer"):
        HumanTeacher(run_dir, renderer="Pendulum-v1")
    bad = HumanTeacher(run_dir, renderer=lambda obs: np.zeros((len(obs), 8, 8)), wait=0, verbose=False)
    with pytest.raises(ValueError, match="renderer"):
        bad.label(*pairs(1))
    good = HumanTeacher(run_dir, renderer=lambda obs: np.zeros((len(obs), 8, 6, 3), np.uint8), wait=0, verbose=False)
    good.label(*pairs(1))
    assert LabelStore(run_dir).load_query(good.outstanding[0]).frames1.shape == (H, 8, 6, 3)


def test_observation_bars_fallback():
    frames = observation_frames(np.array([[1.0, -1.0], [0.0, 0.5]]), height=20, bar=4)
    assert frames.shape == (2, 20, 8, 3) and frames.dtype == np.uint8
    assert not np.array_equal(frames[0], frames[1])


def test_drlhf_trains_on_human_labels_given_late(tmp_path):
    """The agent accepts a HumanTeacher; labels given after label() returned reach the agent."""
    import torch as th

    from agents.sobirl import DRLHF

    th.set_num_threads(1)
    teacher = HumanTeacher(tmp_path / "run", wait=0, verbose=False)
    model = DRLHF("MlpPolicy", "Pendulum-v1", feedback=teacher, seed=0, learning_starts=100, outer_freq=100,
                  n_queries=6, segment_length=10, reward_steps=2, batch_size=32, policy_kwargs=dict(net_arch=[16]))  # fmt: skip
    assert model.uses_preferences
    model.learn(200)
    store = LabelStore(tmp_path / "run")
    asked = store.pending()
    assert len(asked) > 0 and len(model.preferences) == 0
    for qid in asked:
        store.record(qid, "left")
    model.learn(100, reset_num_timesteps=False)
    assert len(model.preferences) == len(asked)
    model.save(tmp_path / "agent")
    assert isinstance(DRLHF.load(tmp_path / "agent").feedback, HumanTeacher)


# ------------------------------------------------------------------------------------- browser
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium")
    if missing:
        skip_unless_ci(f"browser test needs {missing}")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1000,800"):  # fmt: skip
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(15)
    yield driver
    driver.quit()


@pytest.fixture
def served(run_dir):
    """The page on a free localhost port, in a thread."""
    from werkzeug.serving import make_server

    ask(run_dir, 2)
    server = make_server("127.0.0.1", 0, create_app(run_dir), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    thread.join(5)


def test_browser_click_and_key_record_labels(browser, served, run_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 10)
    ids = LabelStore(run_dir).pending()
    browser.get(served)
    wait.until(lambda d: d.find_element(By.ID, "progress").text.startswith("0 of 2 labelled"))
    for side in ("left", "right"):  # both animations are shown and decoded
        img = browser.find_element(By.ID, side)
        assert img.is_displayed() and img.get_attribute("src").endswith(f"{ids[0]}/{side}.gif")
        wait.until(lambda d, img=img: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0)
    browser.find_element(By.ID, "btn-right").click()
    wait.until(lambda d: d.find_element(By.ID, "progress").text.startswith("1 of 2 labelled"))
    ds = PreferenceDataset.load(run_dir / "preferences.npz")
    np.testing.assert_array_equal(ds.labels, [0.0])  # right preferred: label 0
    assert LabelStore(run_dir).answers() == {ids[0]: 0.0}
    # keyboard: "3" = equal, on the second query
    wait.until(lambda d: d.find_element(By.ID, "left").get_attribute("src").endswith(f"{ids[1]}/left.gif"))
    browser.find_element(By.TAG_NAME, "body").send_keys("3")
    wait.until(lambda d: d.find_element(By.ID, "idle").is_displayed())
    assert LabelStore(run_dir).answers() == {ids[0]: 0.0, ids[1]: 0.5}
    np.testing.assert_array_equal(PreferenceDataset.load(run_dir / "preferences.npz").labels, [0.0, 0.5])
